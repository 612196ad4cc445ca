"""Sweep of the near-dedup threshold (and shingle size) on what the default must get right.

    python tests/bench/bench_dedup_threshold.py --out tests/bench/results/dedup_threshold.json

Three sets, all through the real ``near_dedup`` (MinHash LSH + exact Jaccard + number/answer guard):
- planted paraphrases: word-problem templates, each instance paired with a copy that differs in
  one word or phrase ("Then" vs "Later,", "buys" vs "gets", ...), same numbers and answer. Recall
  = share of the copies removed (one per pair must go).
- templated prompts that must survive: generated arithmetic ("What is 3 + 4?" vs "What is 3 + 5?")
  and countdown instances from the curate generators. Any removal is a false positive.
- same numbers, different question: a one-word edit that changes the answer ("buys" vs "loses").
  Any removal is a false positive.
The table lists, per (shingle, threshold), recall and false positives; ``chosen`` is the highest
threshold whose recall is 1.0 with no false positive, at the default shingle size.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from components.data.config import ArithmeticSource, CountdownSource, DedupConfig  # noqa: E402
from components.data.dedup import jaccard, near_dedup, shingles  # noqa: E402
from components.data.generators import generate_arithmetic, generate_countdown  # noqa: E402
from components.data.normalize import prompt_id  # noqa: E402

# (template, one-word/phrase paraphrase of it, answer from a and b)
PARAPHRASES = [
    ("Sam has {a} marbles. Then he buys {b} more marbles. How many marbles does Sam have now?",
     "Sam has {a} marbles. Later, he buys {b} more marbles. How many marbles does Sam have now?", "a+b"),
    ("A baker made {a} loaves in the morning and {b} loaves in the afternoon. How many loaves did the baker make in total?",
     "A baker baked {a} loaves in the morning and {b} loaves in the afternoon. How many loaves did the baker make in total?", "a+b"),
    ("There are {a} birds on a tree. Then {b} more birds land on it. How many birds are on the tree now?",
     "There are {a} birds on a tree. Next, {b} more birds land on it. How many birds are on the tree now?", "a+b"),
    ("Lily reads {a} pages every day. How many pages does she read in {b} days?",
     "Lily reads {a} pages each day. How many pages does she read in {b} days?", "a*b"),
    ("A box holds {a} pencils. How many pencils are in {b} boxes? Give only the final number.",
     "A box contains {a} pencils. How many pencils are in {b} boxes? Give only the final number.", "a*b"),
    ("Tom had {a} stickers and then got {b} more from a friend. How many stickers does Tom have?",
     "Tom had {a} stickers and later got {b} more from a friend. How many stickers does Tom have?", "a+b"),
]
# (template, a one-word edit that asks another question with the same numbers, its answer)
DIFFERENT = [
    ("Sam has {a} marbles. Then he buys {b} more marbles. How many marbles does Sam have now?", "a+b",
     "Sam has {a} marbles. Then he loses {b} of his marbles. How many marbles does Sam have now?", "a-b"),
    ("Lily reads {a} pages every day. How many pages does she read in {b} days?", "a*b",
     "Lily reads {a} pages every day. How many pages does she read in {b} weeks?", "a*b*7"),
]
THRESHOLDS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]
SHINGLES = [3, 4, 5]


def _row(prompt: str, answer: int | str, source: str) -> dict:
    return {"id": prompt_id(prompt), "prompt": prompt, "answer": str(answer), "source": source}


def _value(expr: str, a: int, b: int) -> int:
    return eval(expr, {}, {"a": a, "b": b})  # noqa: S307 - our own fixed expressions


def build_sets(instances: int) -> dict[str, list]:
    pairs, different = [], []
    numbers = [(a, b) for a in range(12, 12 + instances) for b in (3, 4)][:instances]
    for k, (t, p, ans) in enumerate(PARAPHRASES):
        for a, b in numbers:
            pairs.append((_row(t.format(a=a, b=b), _value(ans, a, b), f"para{k}"),
                          _row(p.format(a=a, b=b), _value(ans, a, b), f"para{k}")))
    for k, (t, ans, u, ans2) in enumerate(DIFFERENT):
        for a, b in numbers:
            different.append((_row(t.format(a=a, b=b), _value(ans, a, b), f"diff{k}"),
                              _row(u.format(a=a, b=b), _value(ans2, a, b), f"diff{k}")))
    arith = generate_arithmetic(ArithmeticSource(name="arith", n=400, digits=1, operators=["+", "-", "*"], seed=0))
    arith += generate_arithmetic(ArithmeticSource(name="arith2", n=400, digits=2, operators=["+", "*"], seed=1))
    count = generate_countdown(CountdownSource(name="countdown", n=300, seed=0))
    templated = [_row(r["prompt"], r["answer"], "templated") for r in arith + count]
    return {"pairs": pairs, "different": different, "templated": list({r["id"]: r for r in templated}.values())}


def sweep(sets: dict[str, list], shingle: int, threshold: float, num_perm: int) -> dict:
    rows = [r for p in sets["pairs"] for r in p] + [r for p in sets["different"] for r in p] + sets["templated"]
    kept, removed = near_dedup(rows, threshold=threshold, shingle=shingle, num_perm=num_perm)
    gone = {r["id"] for r, _ in removed}
    found = sum(1 for a, b in sets["pairs"] if a["id"] in gone or b["id"] in gone)
    both = sum(1 for a, b in sets["pairs"] if a["id"] in gone and b["id"] in gone)
    fp_t = sum(1 for r in sets["templated"] if r["id"] in gone)
    # The first member repeats a paraphrase template (it may go as a copy of that); the edited
    # member asks another question and must stay.
    fp_d = sum(1 for _, b in sets["different"] if b["id"] in gone)
    return {"shingle": shingle, "threshold": threshold, "paraphrase_recall": found / len(sets["pairs"]),
            "pairs_both_removed": both, "templated_removed": fp_t, "templated_rows": len(sets["templated"]),
            "different_question_removed": fp_d, "different_pairs": len(sets["different"])}


def jaccards(pairs: list, shingle: int) -> dict:
    js = [jaccard(shingles(a["prompt"], shingle), shingles(b["prompt"], shingle)) for a, b in pairs]
    return {"min": min(js), "median": statistics.median(js), "max": max(js)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=20, help="instances per paraphrase template")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    sets = build_sets(args.instances)
    num_perm = DedupConfig().num_perm
    rows = [sweep(sets, k, t, num_perm) for k in SHINGLES for t in THRESHOLDS]
    default_k = DedupConfig().shingle
    ok = [r for r in rows if r["shingle"] == default_k and r["paraphrase_recall"] == 1.0
          and r["templated_removed"] == 0 and r["different_question_removed"] == 0]
    result = {
        "planted_pairs": len(sets["pairs"]), "templated_rows": len(sets["templated"]),
        "different_pairs": len(sets["different"]), "num_perm": num_perm,
        "pair_jaccard": {k: jaccards(sets["pairs"], k) for k in SHINGLES},
        "different_jaccard": {k: jaccards(sets["different"], k) for k in SHINGLES},
        "sweep": rows,
        "chosen": {"shingle": default_k, "threshold": max(r["threshold"] for r in ok) if ok else None},
        "default_in_code": {"shingle": default_k, "threshold": DedupConfig().threshold},
        "seconds": time.perf_counter() - t0, "python": platform.python_version(),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
