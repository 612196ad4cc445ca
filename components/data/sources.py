"""Readers for every source type. Each yields rows in the curated schema plus malformed counts.

A malformed record never stops the stage: it is counted under one reason (`bad_json`,
`missing_field`, `wrong_type`, `undecodable`) and sampled into the reject log. A source that
cannot be opened at all raises `CurationError` naming the source.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from components.data.config import (
    ArithmeticSource,
    CountdownSource,
    CsvSource,
    FieldMap,
    HfDiskSource,
    HfHubSource,
    JsonlSource,
    ParquetSource,
    SourceConfig,
    WordProblemSource,
)
from components.data.errors import CurationError
from components.data.generators import generate_arithmetic, generate_countdown
from components.data.normalize import canonical_answer, normalize_text, prompt_id
from components.data.rejects import RejectLog
from components.data.word_problems import generate_word_problems

MALFORMED_REASONS = ("bad_json", "missing_field", "wrong_type", "undecodable")
_MISSING = object()
_SURROGATE = re.compile("[\udc80-\udcff]")
_GENERATED_FIELDS = FieldMap(system="system", meta="meta", task="task")
DATASETS_PIN = "datasets==5.2.0"


class Malformed(Exception):
    """A record that cannot become a row; `raw` is what the reader saw (for the reject log)."""

    def __init__(self, reason: str, detail: str, raw: Any = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.raw = raw


@dataclass
class ReadResult:
    rows: list[dict[str, Any]]
    rows_in: int = 0
    malformed: Counter[str] = field(default_factory=Counter)


def _get(record: dict[str, Any], dotted: str) -> Any:
    cur: Any = record
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _text(value: Any, name: str, *, allow_number: bool = False) -> str | None:
    """A field's value as text; None when absent. Raises Malformed on wrong type or bad bytes."""
    if value is _MISSING or value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Malformed("undecodable", f"{name}: {e}") from None
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise Malformed("wrong_type", f"{name}: expected text, got {type(value).__name__}")
    if _SURROGATE.search(value):
        raise Malformed("undecodable", f"{name}: bytes that are not UTF-8")
    return value


def _meta(record: dict[str, Any], spec: str | list[str] | None) -> dict[str, Any]:
    if spec is None:
        return {}
    if isinstance(spec, list):
        out = {}
        for col in spec:
            value = _get(record, col)
            if value is _MISSING or value is None:
                raise Malformed("missing_field", f"meta column {col!r} missing")
            out[col.split(".")[-1]] = value
        return out
    value = _get(record, spec)
    if value is _MISSING or value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise Malformed("bad_json", f"meta: {e}") from None
    if not isinstance(value, dict):
        raise Malformed("wrong_type", f"meta: expected an object, got {type(value).__name__}")
    return value


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), balanced braces; None if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start == -1:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[begin : i - 1] if depth == 0 else None


def final_answer(text: str, answer_format: str) -> str:
    """The reference answer inside a worked solution (GSM8K ``#### 42``, MATH ``\\boxed{}``)."""
    if answer_format == "gsm8k":
        if "####" not in text:
            raise Malformed("missing_field", "answer has no '#### <answer>' line (gsm8k convention)")
        return text.rsplit("####", 1)[1].strip()
    if answer_format == "boxed":
        boxed = _last_boxed(text)
        if boxed is None:
            raise Malformed("missing_field", "solution has no balanced \\boxed{...} (math convention)")
        return boxed.strip()
    return text


def to_row(record: Any, fields: FieldMap, task: str, source: str) -> dict[str, Any]:
    """Validate one record and return it in the curated schema (normalised)."""
    if not isinstance(record, dict):
        raise Malformed("wrong_type", f"record is {type(record).__name__}, not an object")
    prompt = _text(_get(record, fields.prompt), "prompt")
    answer = _text(_get(record, fields.answer), "answer", allow_number=True)
    if answer is not None and fields.answer_format != "plain":
        answer = final_answer(answer, fields.answer_format)
    system = _text(_get(record, fields.system), "system") if fields.system else None
    row_task = _text(_get(record, fields.task), "task") if fields.task else None
    meta = _meta(record, fields.meta)
    prompt = normalize_text(prompt) if prompt is not None else ""
    answer = canonical_answer(answer) if answer is not None else ""
    if not prompt:
        raise Malformed("missing_field", f"prompt ({fields.prompt!r}) missing or empty")
    if not answer:
        raise Malformed("missing_field", f"answer ({fields.answer!r}) missing or empty")
    try:
        meta_str = json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise Malformed("wrong_type", f"meta not JSON-serialisable: {e}") from None
    return {
        "id": prompt_id(prompt), "prompt": prompt, "answer": answer,
        "system": (normalize_text(system) or None) if system else None,
        "task": row_task or task, "source": source, "meta": meta_str,
    }


def _collect(records: Iterable[tuple[int, Any]], src: Any, fields: FieldMap, rejects: RejectLog) -> ReadResult:
    """Turn (location, record-or-Malformed) pairs into rows, counting malformed ones."""
    out = ReadResult(rows=[])
    for loc, rec in records:
        out.rows_in += 1
        try:
            if isinstance(rec, Malformed):
                raise rec
            out.rows.append(to_row(rec, fields, src.task, src.name))
        except Malformed as m:
            out.malformed[m.reason] += 1
            raw = rec.raw if isinstance(rec, Malformed) else rec
            rejects.add(stage="read", reason=m.reason, source=src.name, detail=str(m), record=raw, location=loc)
    return out


def _read_bytes(src: Any) -> bytes:
    import fsspec

    try:
        with fsspec.open(src.path, "rb", **src.storage_options) as f:
            return f.read()
    except Exception as e:  # noqa: BLE001 - any failure to open is reported with the source name
        raise CurationError(f"source {src.name!r} ({src.type}): cannot open {src.path!r}: {type(e).__name__}: {e}") from e


def _check_columns(src: Any, columns: list[str]) -> None:
    f = src.fields
    wanted = [f.prompt, f.answer, f.system, f.task] + ([f.meta] if isinstance(f.meta, str) else (f.meta or []))
    missing = sorted({w.split(".")[0] for w in wanted if w} - set(columns))
    if missing:
        raise CurationError(f"source {src.name!r} ({src.type}): columns {missing} not found; available: {sorted(columns)}")


def _jsonl_records(data: bytes) -> Iterable[tuple[int, Any]]:
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield lineno, Malformed("undecodable", f"line {lineno}: {e}", line)
            continue
        try:
            yield lineno, json.loads(text)
        except json.JSONDecodeError as e:
            yield lineno, Malformed("bad_json", f"line {lineno}: {e}", text)


def _csv_records(src: CsvSource, data: bytes) -> Iterable[tuple[int, Any]]:
    text = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=src.delimiter)
    _check_columns(src, list(reader.fieldnames or []))
    for i, rec in enumerate(reader, start=2):  # line 1 is the header
        rec.pop(None, None)  # extra cells beyond the header
        yield i, {k: (v if v != "" else None) for k, v in rec.items()}


def _parquet_records(src: ParquetSource, data: bytes) -> Iterable[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise CurationError(f"source {src.name!r} (parquet): {src.path!r} is not a readable parquet file: {e}") from e
    _check_columns(src, table.column_names)
    return enumerate(table.to_pylist())


def _import_datasets(src: Any) -> Any:
    try:
        import datasets
    except ImportError as e:
        raise CurationError(
            f"source {src.name!r} ({src.type}) needs the `datasets` package, which is not installed: "
            f"pip install {DATASETS_PIN}"
        ) from e
    return datasets


def _hf_disk_records(src: HfDiskSource) -> Iterable[tuple[int, Any]]:
    datasets = _import_datasets(src)
    try:
        ds = datasets.load_from_disk(src.path)
    except Exception as e:  # noqa: BLE001
        raise CurationError(f"source {src.name!r} (hf_disk): cannot open {src.path!r}: {type(e).__name__}: {e}") from e
    if isinstance(ds, datasets.DatasetDict):
        if src.split not in ds:
            raise CurationError(f"source {src.name!r} (hf_disk): split {src.split!r} not in {sorted(ds)}")
        ds = ds[src.split]
    _check_columns(src, ds.column_names)
    return enumerate(ds)


def _hf_hub_records(src: HfHubSource) -> Iterable[tuple[int, Any]]:
    datasets = _import_datasets(src)
    try:
        ds = datasets.load_dataset(src.dataset, name=src.config_name, split=src.split, revision=src.revision)
    except Exception as e:  # noqa: BLE001
        raise CurationError(
            f"source {src.name!r} (hf_hub): cannot load {src.dataset!r} split {src.split!r} from the "
            f"Hugging Face Hub ({type(e).__name__}: {e}). Is the hub reachable? Offline, save it with "
            f"save_to_disk and use an hf_disk source, or a local jsonl/parquet/csv file."
        ) from e
    _check_columns(src, ds.column_names)
    return enumerate(ds)


def read_source(src: SourceConfig, rejects: RejectLog) -> ReadResult:
    """All rows of one source in the curated schema, in the source's own order."""
    if isinstance(src, ArithmeticSource):
        return _collect(enumerate(generate_arithmetic(src)), src, _GENERATED_FIELDS, rejects)
    if isinstance(src, CountdownSource):
        return _collect(enumerate(generate_countdown(src)), src, _GENERATED_FIELDS, rejects)
    if isinstance(src, WordProblemSource):
        return _collect(enumerate(generate_word_problems(src)), src, _GENERATED_FIELDS, rejects)
    if isinstance(src, JsonlSource):
        return _collect(_jsonl_records(_read_bytes(src)), src, src.fields, rejects)
    if isinstance(src, CsvSource):
        return _collect(_csv_records(src, _read_bytes(src)), src, src.fields, rejects)
    if isinstance(src, ParquetSource):
        return _collect(_parquet_records(src, _read_bytes(src)), src, src.fields, rejects)
    if isinstance(src, HfDiskSource):
        return _collect(_hf_disk_records(src), src, src.fields, rejects)
    if isinstance(src, HfHubSource):
        return _collect(_hf_hub_records(src), src, src.fields, rejects)
    raise CurationError(f"source {getattr(src, 'name', '?')!r}: unknown type {type(src).__name__}")
