"""Word-problem generator and the GSM8K / MATH field conventions on local files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.data.config import CurateConfig, WordProblemSource, as_range
from components.data.rejects import RejectLog
from components.data.sources import read_source
from components.data.word_problems import THEMES, generate_word_problems
from components.environments import make_environment
from components.environments.arithmetic import evaluate


def _src(**kw):
    return CurateConfig.model_validate({"sources": [kw]}).sources[0]


def test_word_problems_follow_the_knobs_and_their_answers_check():
    cfg = WordProblemSource(name="wp", n=300, steps=[2, 4], digits=[2, 3], seed=3)
    rows = generate_word_problems(cfg)
    assert len({r["prompt"] for r in rows}) == len(rows)
    assert {r["meta"]["theme"] for r in rows} == set(THEMES)
    assert {op for r in rows for op in r["meta"]["operations"]} == {"+", "-", "*", "/"}
    lo, hi = as_range(cfg.steps)
    for r in rows:
        meta = r["meta"]
        assert lo <= meta["steps"] == len(meta["operations"]) <= hi
        assert evaluate(meta["expression"]) == int(r["answer"]) >= 0  # the calculator solution gives the answer
        start = re.search(r"\d+", meta["expression"]).group(0)
        assert as_range(cfg.digits)[0] <= len(start) <= as_range(cfg.digits)[1] and start in r["prompt"]
        assert r["prompt"].endswith("Give only the final number.")


def test_word_problems_are_seeded_and_become_curated_rows():
    cfg = WordProblemSource(name="wp", n=20, steps=1, digits=1, operations=["+"], themes=["market"])
    assert generate_word_problems(cfg) == generate_word_problems(cfg)
    assert generate_word_problems(cfg) != generate_word_problems(cfg.model_copy(update={"seed": 1}))
    res = read_source(_src(type="word_problems", name="wp", n=20, steps=1, digits=1), RejectLog())
    assert res.rows_in == 20 and not res.malformed
    row = res.rows[0]
    assert row["task"] == "numeric" and row["source"] == "wp" and json.loads(row["meta"])["steps"] == 1
    env = make_environment("calculator")
    env.reset(row)
    assert env.step(f"The answer is {row['answer']}.").reward == 1.0
    with pytest.raises(ValueError, match="digits"):
        WordProblemSource(name="wp", n=1, digits=9)


def test_gsm8k_convention_from_jsonl(tmp_path: Path):
    path = tmp_path / "gsm8k.jsonl"
    records = [
        {"question": "Tom has 3 bags of 24 marbles. How many marbles?", "answer": "3 * 24 = <<3*24=72>>72\n#### 72"},
        {"question": "A school buys 40 boxes of 25 pens. How many pens?", "answer": "40 * 25 = 1000\n#### 1,000"},
        {"question": "A record without the final answer line.", "answer": "It is 5."},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    res = read_source(_src(type="jsonl", name="g", path=str(path), convention="gsm8k"), RejectLog())
    assert [r["answer"] for r in res.rows] == ["72", "1000"]
    assert res.rows[0]["prompt"] == records[0]["question"]
    assert dict(res.malformed) == {"missing_field": 1}


def test_math_convention_from_parquet_and_field_override(tmp_path: Path):
    path = tmp_path / "math.parquet"
    solutions = ["So $x = \\boxed{\\frac{1}{2}}$.", "First \\boxed{3}, then in the end \\boxed{2^{10}}.",
                 "No box at all.", "Unbalanced \\boxed{1 + {2}"]
    pq.write_table(pa.table({"problem": [f"Problem {i}" for i in range(4)], "question": [f"Q{i}" for i in range(4)],
                             "solution": solutions}), path)
    res = read_source(_src(type="parquet", name="m", path=str(path), convention="math"), RejectLog())
    assert [r["answer"] for r in res.rows] == ["\\frac{1}{2}", "2^{10}"]
    assert [r["prompt"] for r in res.rows] == ["Problem 0", "Problem 1"] and res.malformed["missing_field"] == 2
    over = read_source(_src(type="parquet", name="m", path=str(path), convention="math",
                            fields={"prompt": "question"}), RejectLog())
    assert [r["prompt"] for r in over.rows] == ["Q0", "Q1"] and over.rows[1]["answer"] == "2^{10}"


def test_gsm8k_convention_from_hf_disk(tmp_path: Path):
    import datasets

    datasets.Dataset.from_dict({"question": ["How many legs do 3 cats have?"], "answer": ["3 * 4 = 12\n#### 12"]}
                               ).save_to_disk(str(tmp_path / "ds"))
    res = read_source(_src(type="hf_disk", name="h", path=str(tmp_path / "ds"), convention="gsm8k"), RejectLog())
    assert [(r["prompt"], r["answer"]) for r in res.rows] == [("How many legs do 3 cats have?", "12")]
