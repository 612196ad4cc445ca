"""Benchmark of the curation dedup stages on synthetic prompts with planted near-duplicates.

    python tests/bench/bench_curation.py --rows 100000 --out tests/bench/results/curation.json

Builds `rows` prompts: 90 % distinct random 30-word prompts and 10 % planted near-duplicates
(a copy of a distinct prompt with one word replaced, the pair is known). Times exact dedup and
near-dup removal (rows/s, wall and CPU: the machine may be shared), and measures the recall of
the planted pairs and the rows removed that were not planted (false positives). Then runs
near-dup removal on `rows` generated arithmetic prompts (templated, Jaccard ~0.6 to each other),
which must stay fast and remove nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from components.data.dedup import exact_dedup, jaccard, minhash_signatures, near_dedup, shingles  # noqa: E402
from components.data.normalize import prompt_id  # noqa: E402


def make_rows(n: int, near_fraction: float, seed: int) -> tuple[list[dict], list[tuple[str, str]]]:
    rng = random.Random(seed)
    vocab = sorted({"".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
                    for _ in range(5000)})
    n_near = int(n * near_fraction)
    base = [" ".join(rng.choice(vocab) for _ in range(30)) for _ in range(n - n_near)]
    pairs_text = []
    for i in rng.sample(range(len(base)), n_near):
        words = base[i].split()
        k = rng.randrange(len(words))
        words[k] = rng.choice([w for w in vocab[:50] if w != words[k]])
        pairs_text.append((base[i], " ".join(words)))
    prompts = base + [v for _, v in pairs_text]
    rng.shuffle(prompts)
    rows = [{"id": prompt_id(p), "prompt": p, "source": "bench"} for p in prompts]
    return rows, [(prompt_id(a), prompt_id(b)) for a, b in pairs_text], pairs_text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--near-fraction", type=float, default=0.10)
    ap.add_argument("--threshold", type=float, default=0.85)
    ap.add_argument("--shingle", type=int, default=5)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("tests/bench/results/curation.json"))
    args = ap.parse_args()

    rows, pairs, pairs_text = make_rows(args.rows, args.near_fraction, args.seed)
    t0 = time.perf_counter()
    for r in rows:  # normalise + sha256 id: the key exact dedup compares
        prompt_id(r["prompt"])
    t_ids = time.perf_counter() - t0
    sims = sorted(jaccard(shingles(a, args.shingle), shingles(b, args.shingle)) for a, b in pairs_text)
    eligible = sum(s >= args.threshold for s in sims)

    t0 = time.perf_counter()
    kept, dupes = exact_dedup(rows)
    t_exact = time.perf_counter() - t0

    t0 = time.perf_counter()
    minhash_signatures([r["prompt"] for r in kept], shingle=args.shingle, num_perm=args.num_perm)
    t_sig = time.perf_counter() - t0

    t0, c0 = time.perf_counter(), time.process_time()
    kept2, removed = near_dedup(kept, threshold=args.threshold, shingle=args.shingle, num_perm=args.num_perm)
    t_near, c_near = time.perf_counter() - t0, time.process_time() - c0

    # templated arithmetic from the generator: near-dup must stay fast and merge nothing
    from components.data.config import ArithmeticSource
    from components.data.generators import generate_arithmetic

    arith = generate_arithmetic(ArithmeticSource(name="a", n=args.rows, digits=[1, 3], operators=["+", "-", "*", "/"],
                                                 num_ops=[1, 3], seed=args.seed))
    arith_rows, _ = exact_dedup([{"id": prompt_id(r["prompt"]), "prompt": r["prompt"]} for r in arith])
    t0 = time.perf_counter()
    _, arith_removed = near_dedup(arith_rows, threshold=args.threshold, shingle=args.shingle, num_perm=args.num_perm)
    t_arith = time.perf_counter() - t0

    rep = {r["id"]: rep_id for r, rep_id in removed}
    found = sum(rep.get(b) == a or rep.get(a) == b for a, b in pairs)
    planted_ids = {x for p in pairs for x in p}
    false_pos = sum(r["id"] not in planted_ids for r, _ in removed)
    result = {
        "rows": len(rows), "planted_pairs": len(pairs), "planted_pairs_jaccard_ge_threshold": eligible,
        "planted_jaccard_min": round(sims[0], 4), "planted_jaccard_median": round(sims[len(sims) // 2], 4),
        "normalise_and_id_rows_per_s": round(len(rows) / t_ids), "exact_dedup_s": round(t_exact, 3), "exact_dedup_rows_per_s": round(len(rows) / t_exact),
        "exact_duplicates": len(dupes),
        "near_dedup_s": round(t_near, 2), "near_dedup_rows_per_s": round(len(kept) / t_near),
        "near_dedup_cpu_s": round(c_near, 2), "near_dedup_rows_per_cpu_s": round(len(kept) / c_near),
        "minhash_signatures_s": round(t_sig, 2), "near_duplicates_removed": len(removed),
        "recall_planted": round(found / len(pairs), 4),
        "recall_planted_eligible": round(found / eligible, 4) if eligible else None,
        "false_positives": false_pos,
        "arithmetic_rows": len(arith_rows), "arithmetic_near_dedup_s": round(t_arith, 2),
        "arithmetic_near_dedup_rows_per_s": round(len(arith_rows) / t_arith),
        "arithmetic_near_duplicates_removed": len(arith_removed),
        "threshold": args.threshold, "shingle": args.shingle, "num_perm": args.num_perm,
        "machine": f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| measure | value |\n|---|---|")
    for k, v in result.items():
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
