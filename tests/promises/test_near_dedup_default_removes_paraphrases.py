"""Promise: the default near-dedup settings do what their docstring says: one-word paraphrases
("Then" vs "Later,") are removed, templated prompts that are different problems ("What is 3 + 4?"
vs "What is 3 + 5?", countdown instances, a one-word edit that changes the answer) all survive.

Runs the curate component with the default config (only the source given) on a JSONL file, as a
recipe that names just its sources would. The sets come from the sweep that chose the default
(tests/bench/bench_dedup_threshold.py), so the test and the README table measure the same thing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_dedup_threshold import build_sets  # noqa: E402

from components.data.config import CurateConfig  # noqa: E402
from components.data.curate import load_rows, run_curation  # noqa: E402


def test_default_threshold_removes_planted_paraphrases_and_keeps_templated_prompts(tmp_path):
    sets = build_sets(8)
    pairs, different, templated = sets["pairs"], sets["different"], sets["templated"]
    rows = [r for p in pairs for r in p] + [b for _, b in different] + templated
    src = tmp_path / "pool.jsonl"
    src.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in rows))
    cfg = CurateConfig.model_validate({"sources": [{"type": "jsonl", "name": "pool", "path": str(src)}],
                                       "eval_fraction": 0.0})
    run_curation(cfg, tmp_path / "out")
    kept = {r["prompt"] for r in load_rows(tmp_path / "out" / "train")}

    # Each planted pair: at most one member survives (clusters across templates may keep fewer).
    assert all(not (a["prompt"] in kept and b["prompt"] in kept) for a, b in pairs)
    # Templated prompts and same-numbers-other-question edits are all different problems.
    assert all(r["prompt"] in kept for r in templated)
    assert all(b["prompt"] in kept for _, b in different)
