"""Exact and near-duplicate removal.

Exact: same normalised prompt (same id); the first row in source order is kept.
Near: MinHash over character shingles of the lower-cased prompt, MinHashLSH for candidates,
then each candidate pair is confirmed with the exact Jaccard of the shingle sets (so the result
does not depend on MinHash noise) and only if both rows have the same answer and both prompts
contain the same numbers and arithmetic operators in the same order (prompts that differ there are different problems with
different answers, e.g. "What is 12 + 7?" vs "What is 12 + 8?" or "What is 4 / 2 + 2?"). Confirmed pairs are joined into clusters (union-find); the row with the
smallest id is kept from each cluster.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Callable, Sequence

import numpy as np

# Numbers and arithmetic operators (not hyphens inside words): the "math skeleton" of a prompt.
_MATH = re.compile(r"\d+(?:\.\d+)?|(?<![^\W\d_])[-+*/×÷^=](?![^\W\d_])")


def exact_dedup(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, removed): keeps the first row of each id in the given order."""
    seen: set[str] = set()
    kept, removed = [], []
    for row in rows:
        (removed if row["id"] in seen else kept).append(row)
        seen.add(row["id"])
    return kept, removed


def shingles(text: str, k: int) -> set[str]:
    """Character k-grams of the lower-cased text (the whole text when shorter than k)."""
    t = text.lower()
    if len(t) <= k:
        return {t}
    return {t[i : i + k] for i in range(len(t) - k + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))
_POLY = np.uint32(0x01000193)  # FNV prime: base of the rolling k-gram hash (mod 2^32)
_CHUNK_CHARS = 4_000
MAX_CHARS = 4_096  # default bound on the characters of one prompt that near-dedup reads  # characters per vectorised block: keeps the num_perm x shingles scratch in cache


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3 finaliser, the same pre-mix datasketch applies before its affine permutations."""
    s1, m1, s2, m2, s3 = _FMIX32
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s3)


def _shingle_hashes(texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every character k-gram of each lower-cased text, concatenated, and the
    offset where each text's hashes start. A text shorter than k contributes one hash of itself.
    Vectorised with numpy: a Python loop over 10^7 shingles would dominate the whole stage."""
    lowered = [t.lower() for t in texts]
    cps = np.frombuffer("".join(lowered).encode("utf-32-le"), dtype=np.uint32)
    lens = np.fromiter((len(t) for t in lowered), dtype=np.int64, count=len(lowered))
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    n = len(cps)
    with np.errstate(over="ignore"):
        full = np.zeros(max(n - k + 1, 0), dtype=np.uint32)
        for j in range(k):
            full = full * _POLY + cps[j : j + len(full)]
        counts = np.maximum(lens - k + 1, 1)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        window_start = np.repeat(starts - offsets, counts) + np.arange(int(counts.sum()))
        is_long = np.repeat(lens >= k, counts)
        out = np.zeros(len(window_start), dtype=np.uint32)
        out[is_long] = full[window_start[is_long]]
        for r in np.flatnonzero(lens < k):  # rare: texts shorter than one shingle hash as a whole
            h = np.uint32(len(lowered[r]))
            for c in cps[starts[r] : starts[r] + lens[r]]:
                h = h * _POLY + c
            out[offsets[r]] = h
    return out, offsets


def minhash_signatures(texts: Sequence[str], *, shingle: int, num_perm: int, seed: int = 1) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures, computed block-wise with numpy using
    datasketch's own affine32 permutations, so they are interchangeable with
    `MinHash(num_perm, seed).update_batch(...)` fed the same 32-bit hashes."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    sigs = np.empty((len(texts), num_perm), dtype=np.uint32)
    i = 0
    while i < len(texts):
        j, chars = i, 0
        while j < len(texts) and (j == i or chars + len(texts[j]) <= _CHUNK_CHARS):
            chars += len(texts[j])
            j += 1
        hashes, offsets = _shingle_hashes(texts[i:j], shingle)
        with np.errstate(over="ignore"):
            phv = a[:, None] * _fmix32(hashes)[None, :]  # (num_perm, shingles): reduce along rows
            phv += b[:, None]
        sigs[i:j] = np.minimum.reduceat(phv, offsets, axis=1).T
        i = j
    return sigs


class _Signature:
    """What MinHashLSH reads from a MinHash (hash values, length, scheme), without the cost of
    building a full MinHash object per row (about a third of the LSH time)."""

    __slots__ = ("hashvalues",)
    scheme = "affine32"

    def __init__(self, hashvalues: np.ndarray) -> None:
        self.hashvalues = hashvalues

    def __len__(self) -> int:
        return len(self.hashvalues)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def near_duplicate_pairs(
    texts: Sequence[str], *, threshold: float, shingle: int, num_perm: int,
    progress: Callable[[float], None] | None = None, max_chars: int = MAX_CHARS,
    answers: Sequence[str] | None = None,
) -> list[tuple[int, int]]:
    """Index pairs (j, i), j < i, whose prompts are near duplicates (confirmed, see module doc).
    Each prompt is compared on its first ``max_chars`` characters: at most that many shingles a
    row, so memory grows with the number of rows, never with the length of one. With ``answers``,
    prompts whose answers differ are never paired (a one-word edit that asks another question)."""
    from datasketch import MinHashLSH

    texts = [t[:max_chars] for t in texts]
    sigs = minhash_signatures(texts, shingle=shingle, num_perm=num_perm)
    # The guard's key: numbers and operators in order, then the answer when there is one.
    numbers = [_MATH.findall(t) + ["=>", answers[i] if answers is not None else ""] for i, t in enumerate(texts)]
    # Salt each signature with its numbers and operators: XOR by one per-row constant keeps band
    # equality between rows with the same skeleton and breaks it between different skeletons,
    # which the guard below would reject anyway. Templated arithmetic prompts (Jaccard ~0.6 to
    # each other) would otherwise make ~every pair an LSH candidate.
    salts = np.array([zlib.crc32(" ".join(n).encode()) for n in numbers], dtype=np.uint32)
    sigs ^= salts[:, None]
    if progress:
        progress(0.5)
    # Weights favour recall: each candidate is confirmed exactly, so false positives only cost
    # time (at threshold 0.85 this picks 11 bands x 11 rows: P(candidate | J=0.86) ~ 0.90).
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9))
    pairs: list[tuple[int, int]] = []
    step = max(1, len(texts) // 10)
    for i in range(len(texts)):
        mh = _Signature(sigs[i])
        cands = lsh.query(mh)
        if cands:
            si = shingles(texts[i], shingle)
            for j in sorted(cands):
                if numbers[j] == numbers[i] and jaccard(si, shingles(texts[j], shingle)) >= threshold:
                    pairs.append((j, i))
        lsh.insert(i, mh, check_duplication=False)
        if progress and i % step == 0:
            progress(0.5 + 0.5 * i / len(texts))
    return pairs


def near_dedup(
    rows: Sequence[dict[str, Any]], *, threshold: float, shingle: int, num_perm: int,
    progress: Callable[[float], None] | None = None, max_chars: int = MAX_CHARS,
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """(kept, removed as (row, id of the kept representative)); kept keeps the input order."""
    if len(rows) < 2:
        return list(rows), []
    pairs = near_duplicate_pairs(
        [r["prompt"] for r in rows], threshold=threshold, shingle=shingle, num_perm=num_perm, progress=progress,
        max_chars=max_chars, answers=[str(r.get("answer", "")) for r in rows],
    )
    uf = _UnionFind(len(rows))
    for j, i in pairs:
        uf.union(j, i)
    best: dict[int, int] = {}  # cluster root -> index of the row with the smallest (id, index)
    for i, row in enumerate(rows):
        root = uf.find(i)
        if root not in best or (row["id"], i) < (rows[best[root]]["id"], best[root]):
            best[root] = i
    keep = set(best.values())
    kept = [r for i, r in enumerate(rows) if i in keep]
    removed = [(r, rows[best[uf.find(i)]]["id"]) for i, r in enumerate(rows) if i not in keep]
    return kept, removed
