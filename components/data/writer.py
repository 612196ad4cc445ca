"""Writing and reading curated splits: parquet shards, manifest with a content digest, card."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

COLUMNS = ("id", "prompt", "answer", "system", "task", "source", "meta")
NULLABLE = {"system"}
FORMAT = "posttrain.curated/v1"


def _schema():  # pyarrow imported lazily: light import for config-only users
    import pyarrow as pa

    return pa.schema([pa.field(c, pa.string(), nullable=c in NULLABLE) for c in COLUMNS])


def content_digest(splits: dict[str, Sequence[dict[str, Any]]]) -> str:
    """sha256 of the canonical row content (split name, then the columns in order, row by row):
    identical data gives an identical digest whatever the files' bytes or timestamps."""
    h = hashlib.sha256(FORMAT.encode())
    for split in sorted(splits):
        for row in splits[split]:
            h.update(json.dumps([split, [row[c] for c in COLUMNS]], ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
    return h.hexdigest()


def write_split(rows: Sequence[dict[str, Any]], split_dir: Path, shard_rows: int) -> list[Path]:
    """Replace `split_dir` with part-NNNNN.parquet shards of at most `shard_rows` rows (one empty
    shard when there are no rows, so readers always find a file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if split_dir.exists():
        shutil.rmtree(split_dir)
    split_dir.mkdir(parents=True)
    paths = []
    for k, start in enumerate(range(0, max(len(rows), 1), shard_rows)):
        chunk = rows[start : start + shard_rows]
        table = pa.Table.from_pylist([{c: r[c] for c in COLUMNS} for r in chunk], schema=_schema())
        path = split_dir / f"part-{k:05d}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    return paths


def load_rows(split_dir: Path) -> list[dict[str, Any]]:
    """All rows of a split folder written by `write_split`, in order."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for path in sorted(Path(split_dir).glob("part-*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def write_manifest(path: Path, *, digest: str, splits: dict[str, list[Path]], counts: dict[str, int],
                   extra: dict[str, Any]) -> None:
    root = path.parent
    manifest = {
        "format": FORMAT,
        "digest": digest,
        "schema": {c: "string?" if c in NULLABLE else "string" for c in COLUMNS},
        "splits": {s: {"rows": counts[s], "files": [p.relative_to(root).as_posix() for p in files]}
                   for s, files in splits.items()},
        **extra,
    }
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _cell(value: Any, width: int = 80) -> str:
    text = "" if value is None else str(value)
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("|", "\\|").replace("\n", " ")


def write_card(path: Path, *, digest: str, config_json: str, sources: list[dict[str, Any]],
               filter_counts: list[dict[str, Any]], malformed: dict[str, int], counts: dict[str, int],
               examples: dict[str, list[dict[str, Any]]]) -> None:
    """dataset_card.md: what went in, what each filter removed, and what came out."""
    lines = [
        "# Curated dataset", "",
        f"- digest: `{digest}`",
        f"- train rows: {counts['train']}, eval rows: {counts['eval']}", "",
        "## Sources", "",
        "| source | type | task | weight | max_rows | rows read | malformed | train | eval |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sources:
        lines.append("| " + " | ".join(_cell(s[k]) for k in
                     ("name", "type", "task", "weight", "max_rows", "rows_in", "malformed", "train", "eval")) + " |")
    lines += ["", "## Filters (rows removed, in pipeline order)", "", "| filter | removed |", "|---|---|"]
    lines += [f"| {f['filter']} | {f['removed']} |" for f in filter_counts]
    if any(malformed.values()):
        lines += ["", "Malformed rows by reason: " + ", ".join(f"{k}: {v}" for k, v in sorted(malformed.items()))]
    for split, rows in examples.items():
        lines += ["", f"## Example {split} rows", "", "| id | prompt | answer | task | source |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(_cell(r[k]) for k in ("id", "prompt", "answer", "task", "source")) + " |"
                  for r in rows]
    lines += ["", "## Configuration", "", "```json", config_json, "```", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
