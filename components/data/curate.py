"""The curate stage: sources -> normalised rows -> eval split -> per-row filters -> dedup ->
decontamination -> caps and mixing -> parquet shards + manifest + dataset card + reject sample.

Plain Python: knows nothing of Prefect or MLflow. `verify` and `count_tokens` are injected by
the caller (reward registry, tokenizer) so this module needs neither.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

from components.data.config import CurateConfig
from components.data.decontam import EvalIndex, read_eval_prompts
from components.data.dedup import exact_dedup, near_dedup
from components.data.errors import CurationError
from components.data.filters import Verify, filter_passes, split_by
from components.data.mixing import cap_and_mix, seeded_order, unit_hash
from components.data.rejects import RejectLog
from components.data.sources import MALFORMED_REASONS, read_source
from components.data.writer import content_digest, load_rows, write_card, write_manifest, write_split

__all__ = ["CurationError", "CurationResult", "METRIC_KEYS", "load_rows", "run_curation"]

Row = dict[str, Any]
Progress = Callable[[str, float], None]

METRIC_KEYS = (
    "rows_in", "rows_out", "exact_duplicates", "near_duplicates", "malformed", "unverifiable",
    "contaminated", "too_long", "too_short", "charset", "capped", "eval_rows",
)
# Stages that remove rows, in pipeline order (the rows of the filter_counts table).
REMOVAL_STAGES = ("malformed", "unverifiable", "too_long", "too_short", "charset", "exact_duplicates",
                  "near_duplicates", "contaminated", "capped")


class CurationResult(BaseModel):
    """What the stage hands back: figures for tracking and the paths of its outputs.

    `rows_out` counts train rows; `eval_rows` eval rows. Every input row is accounted for:
    rows_in = rows_out + eval_rows + the sum of the removal counts.
    """

    model_config = ConfigDict(extra="forbid")

    metrics: dict[str, float]
    digest: str
    train_path: Path
    eval_path: Path
    manifest_path: Path
    card_path: Path
    rejects_path: Path
    filter_counts: list[dict[str, Any]]


class _Run:
    """Book-keeping shared by the steps: removal counts, the reject sample, the empty-train check."""

    def __init__(self, out_dir: Path, progress: Progress | None) -> None:
        self.counts: Counter[str] = Counter()
        self.rejects = RejectLog()
        self.out_dir = out_dir
        self.progress = progress

    def tick(self, stage: str, fraction: float) -> None:
        if self.progress:
            self.progress(stage, fraction)

    def removed(self, stage: str, rows: list[tuple[Row, str]]) -> None:
        self.counts[stage] += len(rows)
        for row, detail in rows:
            self.rejects.add(stage=stage, reason=stage, source=row["source"], detail=detail,
                             record={k: row[k] for k in ("id", "prompt", "answer")})

    def check_train(self, train: list[Row], before: int, stage: str, hint: str) -> None:
        """Fail when `stage` removed the last train rows: an empty dataset is never a result."""
        if not train:
            self.rejects.write(self.out_dir / "rejects.jsonl")
            raise CurationError(
                f"no train rows left after {stage!r}: it removed the last {before} row(s). {hint} "
                f"Sample of rejected rows: {self.out_dir / 'rejects.jsonl'}"
            )


def _split(rows: list[Row], cfg: CurateConfig) -> tuple[list[Row], list[Row]]:
    """Eval = ids whose seeded hash falls below eval_fraction (capped at eval_max_rows, smallest
    hashes first). By id, so copies of one prompt always land in the same split."""
    if cfg.eval_fraction <= 0:
        return list(rows), []
    scored = {r["id"]: unit_hash(cfg.seed, "split", r["id"]) for r in rows}
    eval_ids = sorted((i for i, u in scored.items() if u < cfg.eval_fraction), key=lambda i: (scored[i], i))
    if cfg.eval_max_rows is not None:
        eval_ids = eval_ids[: cfg.eval_max_rows]
    chosen = set(eval_ids)
    return [r for r in rows if r["id"] not in chosen], [r for r in rows if r["id"] in chosen]


def _dedup(rows: list[Row], cfg: CurateConfig, run: _Run, split: str) -> list[Row]:
    if cfg.dedup.exact:
        rows, dupes = exact_dedup(rows)
        run.removed("exact_duplicates", [(r, f"{split}: same prompt as an earlier row") for r in dupes])
    return rows


def _near(rows: list[Row], cfg: CurateConfig, run: _Run, split: str) -> list[Row]:
    if cfg.dedup.near:
        d = cfg.dedup
        rows, near = near_dedup(rows, threshold=d.threshold, shingle=d.shingle, num_perm=d.num_perm,
                                max_chars=d.max_chars, progress=lambda f: run.tick(f"near_dedup_{split}", f))
        run.removed("near_duplicates", [(r, f"{split}: near duplicate of {rep}") for r, rep in near])
    return rows


_FILTER_HINTS = {"unverifiable": "The verify callback rejected every answer: check the `task` names and answers.",
                 "too_long": "Raise filters.max_prompt_tokens.", "too_short": "Lower filters.min_prompt_tokens.",
                 "charset": "Use filters.charset='any'."}


def _filter(train: list[Row], eval_rows: list[Row], cfg: CurateConfig, run: _Run, verify: Verify | None,
            count_tokens: Callable[[str], int] | None) -> tuple[list[Row], list[Row]]:
    for stage, keep in filter_passes(cfg.filters, verify=verify, count_tokens=count_tokens):
        eval_rows, removed = split_by(eval_rows, keep)
        run.removed(stage, [(r, f"eval: {d}") for r, d in removed])
        before = len(train)
        train, removed = split_by(train, keep)
        run.removed(stage, [(r, f"train: {d}") for r, d in removed])
        run.check_train(train, before, stage, _FILTER_HINTS[stage])
    run.tick("filters", 1.0)
    return train, eval_rows


def run_curation(
    cfg: CurateConfig,
    out_dir: Path,
    *,
    verify: Verify | None = None,
    count_tokens: Callable[[str], int] | None = None,
    progress: Progress | None = None,
) -> CurationResult:
    """Curate `cfg.sources` into `out_dir` (see module doc). Raises CurationError naming the
    source that cannot be opened, or the filter that removed the last train rows."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(out_dir, progress)

    # 1. read + normalise (sources.to_row normalises prompt, answer, system, meta)
    rows: list[Row] = []
    per_source: dict[str, dict[str, Any]] = {}
    malformed: Counter[str] = Counter({r: 0 for r in MALFORMED_REASONS})
    rows_in = 0
    for k, src in enumerate(cfg.sources):
        read = read_source(src, run.rejects)
        rows += read.rows
        rows_in += read.rows_in
        malformed.update(read.malformed)
        per_source[src.name] = {"name": src.name, "type": src.type, "task": src.task, "weight": src.weight,
                                "max_rows": src.max_rows, "rows_in": read.rows_in,
                                "malformed": sum(read.malformed.values()), "train": 0, "eval": 0}
        run.tick("read", (k + 1) / len(cfg.sources))
    run.counts["malformed"] = sum(malformed.values())
    if not rows:
        run.check_train(rows, rows_in, "malformed",
                        "The sources yielded no valid rows; check the `fields` mapping and the files.")

    # 2. eval split, carved before dedup/decontam so the split never depends on them
    train, eval_rows = _split(rows, cfg)
    run.check_train(train, len(rows), "eval_split", "Lower eval_fraction or set eval_max_rows.")

    # 3. per-row filters (verifiable, length, charset) on both splits, before any cross-row work:
    # dedup and decontamination only see rows that can be kept (a 50 MB row never reaches MinHash),
    # and decontamination only protects eval rows that are kept.
    train, eval_rows = _filter(train, eval_rows, cfg, run, verify, count_tokens)

    # 4-5. exact then near dedup, within each split (each keeps at least one row per cluster)
    train, eval_rows = _dedup(train, cfg, run, "train"), _dedup(eval_rows, cfg, run, "eval")
    run.tick("exact_dedup", 1.0)
    before, train, eval_rows = len(train), _near(train, cfg, run, "train"), _near(eval_rows, cfg, run, "eval")
    run.check_train(train, before, "near_duplicates", "Raise dedup.threshold or disable dedup.near.")

    # 6. decontamination of train against the eval split and the named eval files
    index = EvalIndex(cfg.decontam.ngram)
    for r in eval_rows:
        index.add(r["prompt"])
    for path in cfg.decontam.eval_files:
        for prompt in read_eval_prompts(path):
            index.add(prompt)
    if len(index):
        index.drop_template_grams([r["prompt"] for r in train], cfg.decontam.template_df)
        before = len(train)
        train, removed = split_by(train, lambda r: ((m := index.match(r["prompt"])) is None, f"{m} overlap with eval"))
        run.removed("contaminated", removed)
        run.check_train(train, before, "contaminated", "Check decontam.eval_files and decontam.ngram.")
    run.tick("decontam", 1.0)

    # 7. per-source caps and weighted mixing (train only; eval is sized by eval_max_rows)
    before = len(train)
    train, capped = cap_and_mix(train, max_rows={s.name: s.max_rows for s in cfg.sources},
                                weights={s.name: s.weight for s in cfg.sources},
                                total_rows=cfg.total_rows, seed=cfg.seed)
    run.removed("capped", [(r, "over the source cap or its mixing share") for r in capped])
    run.check_train(train, before, "capped", "Raise the sources' max_rows or total_rows.")
    eval_rows = seeded_order(eval_rows, cfg.seed)
    run.tick("mix", 1.0)

    # 8. write
    return _write(cfg, out_dir, run, train, eval_rows, rows_in, malformed, per_source)


def _write(cfg: CurateConfig, out_dir: Path, run: _Run, train: list[Row], eval_rows: list[Row],
           rows_in: int, malformed: Counter[str], per_source: dict[str, dict[str, Any]]) -> CurationResult:
    for split, rows in (("train", train), ("eval", eval_rows)):
        for r in rows:
            per_source[r["source"]][split] += 1
    files = {"train": write_split(train, out_dir / "train", cfg.shard_rows),
             "eval": write_split(eval_rows, out_dir / "eval", cfg.shard_rows)}
    digest = content_digest({"train": train, "eval": eval_rows})
    metrics = {k: float(run.counts.get(k, 0)) for k in METRIC_KEYS}
    metrics.update(rows_in=float(rows_in), rows_out=float(len(train)), eval_rows=float(len(eval_rows)))
    filter_counts = [{"filter": s, "removed": int(run.counts.get(s, 0))} for s in REMOVAL_STAGES]
    counts = {"train": len(train), "eval": len(eval_rows)}
    config = cfg.model_dump(mode="json")
    for src in config["sources"]:  # never copy credentials into artifacts
        if src.get("storage_options"):
            src["storage_options"] = {k: "***" for k in src["storage_options"]}
    manifest_path, card_path, rejects_path = out_dir / "manifest.json", out_dir / "dataset_card.md", out_dir / "rejects.jsonl"
    write_manifest(manifest_path, digest=digest, splits=files, counts=counts,
                   extra={"metrics": metrics, "filter_counts": filter_counts,
                          "malformed": dict(sorted(malformed.items())), "sources": list(per_source.values())})
    write_card(card_path, digest=digest, config_json=json.dumps(config, indent=2, sort_keys=True),
               sources=list(per_source.values()), filter_counts=filter_counts, malformed=dict(malformed),
               counts=counts, examples={"train": train[:3], "eval": eval_rows[:2]})
    run.rejects.write(rejects_path)
    run.tick("write", 1.0)
    return CurationResult(metrics=metrics, digest=digest, train_path=out_dir / "train", eval_path=out_dir / "eval",
                          manifest_path=manifest_path, card_path=card_path, rejects_path=rejects_path,
                          filter_counts=filter_counts)
