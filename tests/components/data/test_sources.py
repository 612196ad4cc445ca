"""Loaders: CSV, Parquet, hf_disk, hf_hub (offline), fsspec URLs, and unopenable sources."""

import json
import sys
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.data.config import CurateConfig
from components.data.curate import CurationError, load_rows, run_curation
from components.data.rejects import RejectLog
from components.data.sources import read_source


def _src(**kw):
    return CurateConfig.model_validate({"sources": [kw]}).sources[0]


def test_csv_with_field_mapping(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_bytes(
        b"question,solution,sys,extra\n"
        b'"Add 2 and 3, then double it",10,Be brief,x\n'           # quoted comma
        b'"A prompt that spans\ntwo lines",\\boxed{4},,y\n'         # quoted newline, empty system
        b"No answer here,,,z\n"                                      # missing answer -> missing_field
        b"Bad \xff byte in this prompt,5,,w\n"                       # not UTF-8 -> undecodable
    )
    src = _src(type="csv", name="c", path=str(path), task="numeric",
               fields={"prompt": "question", "answer": "solution", "system": "sys"})
    res = read_source(src, RejectLog())
    assert res.rows_in == 4 and dict(res.malformed) == {"missing_field": 1, "undecodable": 1}
    assert [(r["prompt"], r["answer"], r["system"]) for r in res.rows] == [
        ("Add 2 and 3, then double it", "10", "Be brief"), ("A prompt that spans two lines", "4", None)]
    with pytest.raises(CurationError, match="'c'.*answer_col"):
        read_source(_src(type="csv", name="c", path=str(path), fields={"prompt": "question", "answer": "answer_col"}),
                     RejectLog())


def test_parquet_types_and_meta_columns(tmp_path: Path) -> None:
    table = pa.table({
        "q": ["Reach 24 with 3 8 1 1", None, "Reach 10 with 2 5"],
        "target": [24, 10, 10],
        "numbers": [[3, 8, 1, 1], [1], [2, 5]],
    })
    pq.write_table(table, tmp_path / "c.parquet")
    src = _src(type="parquet", name="p", path=str(tmp_path / "c.parquet"), task="countdown",
               fields={"prompt": "q", "answer": "target", "meta": ["numbers", "target"]})
    res = read_source(src, RejectLog())
    assert dict(res.malformed) == {"missing_field": 1}  # the null prompt
    assert res.rows[0]["answer"] == "24" and res.rows[0]["task"] == "countdown"  # int answer -> text
    assert json.loads(res.rows[0]["meta"]) == {"numbers": [3, 8, 1, 1], "target": 24}


def test_jsonl_over_fsspec_url_and_nested_fields() -> None:
    url = "memory://posttrain-test/nested.jsonl"
    with fsspec.open(url, "wb") as f:
        f.write(json.dumps({"q": {"text": "What is 1 + 1?"}, "a": {"value": 2}, "meta": '{"k": 1}'}).encode())
    src = _src(type="jsonl", name="m", path=url, fields={"prompt": "q.text", "answer": "a.value", "meta": "meta"})
    res = read_source(src, RejectLog())
    assert [(r["prompt"], r["answer"], r["meta"]) for r in res.rows] == [("What is 1 + 1?", "2", '{"k":1}')]


def test_missing_source_names_it(tmp_path: Path) -> None:
    cfg = CurateConfig.model_validate(
        {"sources": [{"type": "jsonl", "name": "ghost", "path": str(tmp_path / "nope.jsonl")}]})
    with pytest.raises(CurationError, match="'ghost'.*cannot open"):
        run_curation(cfg, tmp_path / "out")


def test_hf_disk_dataset_and_splits(tmp_path: Path) -> None:
    import datasets

    rows = {"problem": ["What is 2 + 2?", "What is 3 + 3?", "What is 4 + 4?"], "solution": ["4", "6", "8"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                          "test": datasets.Dataset.from_dict({k: v[:1] for k, v in rows.items()})}
                         ).save_to_disk(str(tmp_path / "dd"))
    fields = {"prompt": "problem", "answer": "solution"}
    res = read_source(_src(type="hf_disk", name="h", path=str(tmp_path / "dd"), split="test", fields=fields), RejectLog())
    assert [r["prompt"] for r in res.rows] == ["What is 2 + 2?"]
    with pytest.raises(CurationError, match="split 'dev'"):
        read_source(_src(type="hf_disk", name="h", path=str(tmp_path / "dd"), split="dev", fields=fields), RejectLog())
    cfg = CurateConfig.model_validate({"sources": [{"type": "hf_disk", "name": "h", "path": str(tmp_path / "dd"),
                                                    "fields": fields}], "eval_fraction": 0.0})
    out = run_curation(cfg, tmp_path / "out")
    assert sorted(r["answer"] for r in load_rows(out.train_path)) == ["4", "6", "8"]


def test_hf_hub_unreachable_names_source(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args, **kwargs):  # what datasets raises when the hub cannot be reached
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    src = _src(type="hf_hub", name="gsm", dataset="openai/gsm8k", split="test")
    with pytest.raises(CurationError, match="'gsm'.*openai/gsm8k.*Hub"):
        read_source(src, RejectLog())


def test_missing_datasets_package_is_clear(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    src = _src(type="hf_disk", name="h", path=str(tmp_path))
    with pytest.raises(CurationError, match="'h'.*pip install datasets=="):
        read_source(src, RejectLog())
