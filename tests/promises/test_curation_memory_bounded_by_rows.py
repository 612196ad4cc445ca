"""Promise: curation's memory is bounded by the number of rows, not by the length of one row.
The length and charset filters run before near-dedup, so one valid 50 MB row in a JSONL source
is counted as too long (a reject) and the other rows are curated, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from smoke_cli import REPO, cli_env, posttrain_cmd

BIG_CHARS = 50 * 2**20


def _rows() -> list[dict]:
    # Distinct problems (different numbers), so no dedup or decontamination removes any.
    return [{"prompt": f"What is {a} + {b}? Give only the final number.", "answer": str(a + b)}
            for a in range(3, 9) for b in range(11, 16)]


@pytest.mark.slow
def test_a_50mb_row_is_counted_too_long_and_the_rest_is_curated(tmp_path):
    import subprocess

    rows = _rows()
    filler = "Please add the two numbers below, carefully. "
    big = {"prompt": (filler * (BIG_CHARS // len(filler) + 1))[:BIG_CHARS] + " What is 2 + 2?", "answer": "4"}
    src = tmp_path / "pool.jsonl"
    with src.open("w") as f:
        for r in rows[: len(rows) // 2] + [big] + rows[len(rows) // 2 :]:
            f.write(json.dumps(r) + "\n")
    assert src.stat().st_size > BIG_CHARS
    recipe = yaml.safe_load((REPO / "components/recipes/smoke.yaml").read_text())
    recipe["name"] = "big-row"
    recipe["curate"] = {"sources": [{"type": "jsonl", "name": "pool", "path": str(src)}],
                        "eval_fraction": 0.2, "seed": 0}
    recipe_path = tmp_path / "big-row.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))

    summary = tmp_path / "s.json"
    proc = subprocess.run(posttrain_cmd("run", "--recipe", str(recipe_path), "--stages", "curate",
                                        "--summary", str(summary)),
                          env=cli_env(tmp_path / "state"), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    m = json.loads(summary.read_text())["stages"]["curate"]["metrics"]
    assert m["rows_in"] == len(rows) + 1
    assert m["too_long"] == 1
    assert m["rows_out"] + m["eval_rows"] == len(rows)
    assert m["near_duplicates"] == 0 and m["exact_duplicates"] == 0

    out = Path(json.loads(summary.read_text())["stages"]["curate"]["outputs"]["dataset"]["uri"])
    from components.data.curate import load_rows

    kept = load_rows(out / "train") + load_rows(out / "eval")
    assert sorted(r["prompt"] for r in kept) == sorted(r["prompt"] for r in rows)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    too_long = [r for r in rejects if r["reason"] == "too_long"]
    assert len(too_long) == 1 and len(too_long[0]["record"]) < 10_000  # the sample is bounded too
