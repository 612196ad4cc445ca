"""``posttrain gc``: delete stage payloads nothing needs any more, and say what each run wrote.

A payload is a folder ``<artifact root>/<stage>/<key>`` holding ``_ref.json``. Kept: every
payload of a run that produced a registered model version (its whole lineage, so rerunning that
recipe is still all cache hits), of the last ``keep_last`` runs, of a live deployment, anything
written in the last ``older_than_days`` (a killed run stays resumable) or while a run is live.
Deleted: everything else, and the optimiser state (``trainer_state.pt``) of kept RL segments that
a later kept segment already continued from. Local artifact roots only.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.artifacts import REF_FILE
from components.runowners import owners

SEGMENT_STATE = "trainer_state.pt"


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def size_of(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def payloads(root: Path) -> dict[str, Path]:
    """relpath (``stage/key``) -> folder, for every committed payload under ``root``."""
    return {p.parent.relative_to(root).as_posix(): p.parent for p in Path(root).glob(f"*/*/{REF_FILE}")}


def run_payloads(root: Path, results: dict) -> list[str]:
    """relpaths of every payload a run used or wrote (RL: every segment of the chain)."""
    out = []
    for res in results.values():
        for ref in res.outputs.values():
            out.append(_rel(root, ref.uri))
        out += [f"rl_train/{k}" for k in res.info.get("segments", [])]
    return [r for r in dict.fromkeys(out) if r]


def _rel(root: Path, uri: str) -> str:
    try:
        return Path(uri.removeprefix("file://")).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return ""


def storage_summary(root: Path, results: dict, since: float) -> dict:
    """``payloads`` (what the run needs) and ``bytes_written`` (payloads committed after ``since``)."""
    rels = run_payloads(root, results)
    written = {r: size_of(Path(root) / r) for r in rels
               if (Path(root) / r / REF_FILE).exists() and (Path(root) / r / REF_FILE).stat().st_mtime >= since}
    chain = [f"rl_train/{k}" for res in results.values() for k in res.info.get("segments", [])]
    return {"payloads": rels, "rl_segments": chain, "bytes_written": sum(written.values()),
            "bytes_written_by_payload": written}


@dataclass
class Item:
    path: Path
    bytes: int
    why: str


@dataclass
class Plan:
    items: list[Item] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(i.bytes for i in self.items)

    def apply(self) -> None:
        for item in self.items:
            if item.path.is_dir():
                shutil.rmtree(item.path, ignore_errors=True)
            else:
                item.path.unlink(missing_ok=True)


def _run_summaries(tracker) -> list[tuple[str, float, dict]]:
    """(parent run id, start time, summary.json) of every finished-or-failed parent run, newest first."""
    out = []
    for run in tracker.parent_runs():
        try:
            summary = json.loads(tracker.read_text(run.info.run_id, "summary.json"))
        except Exception:  # noqa: BLE001 - a killed run has no summary
            continue
        out.append((run.info.run_id, run.info.start_time / 1000.0, summary))
    return sorted(out, key=lambda t: -t[1])


def _deployed(state: Path, root: Path) -> set[str]:
    path = state / "deployments.json"
    if not path.exists():
        return set()
    found: set[str] = set()

    def walk(x) -> None:
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str) and (rel := _rel(root, x)):
            found.add("/".join(rel.split("/")[:2]))

    walk(json.loads(path.read_text() or "{}"))
    return found


def _keep_set(tracker, settings, root: Path, keep_last: int) -> tuple[set[str], list[list[str]]]:
    """Payloads to keep, and the RL chains (ordered segment relpaths) of the kept runs."""
    summaries = _run_summaries(tracker)
    registered = {mv.tags.get("mlflow_parent_run_id") for mv in tracker.all_versions()}
    keep: set[str] = set(_deployed(settings.state_path, root))
    chains = []
    for i, (run_id, _, summary) in enumerate(summaries):
        if i < keep_last or run_id in registered:
            keep.update(summary.get("payloads", []))
            chains.append(summary.get("rl_segments", []))
    return keep, chains


def collect(tracker, settings, keep_last: int = 1, older_than_days: float = 1.0) -> Plan:
    """What ``gc`` would delete (nothing is deleted here)."""
    if settings.remote_root:
        from components.preflight import UserError

        raise UserError(f"gc works on a local artifact root; {settings.remote_root} is remote",
                        "use the bucket's lifecycle rules, or run gc where the root is a local folder")
    root = Path(settings.artifact_uri.removeprefix("file://"))
    keep, chains = _keep_set(tracker, settings, root, keep_last)
    cutoff = time.time() - older_than_days * 86400
    live = [o.path.stat().st_mtime for o in owners(settings.state_path) if not o.dead and o.local]
    if live:
        cutoff = min(cutoff, min(live))
    plan = Plan()
    for rel, folder in sorted(payloads(root).items()):
        young = (folder / REF_FILE).stat().st_mtime >= cutoff
        if rel in keep or young:
            plan.kept.append(rel)
            continue
        plan.items.append(Item(folder, size_of(folder), "referenced by no registered version, deployment or recent run"))
    for chain in chains:
        for rel in chain[:-1]:  # the last segment's state continues a longer run: keep it
            state = root / rel / SEGMENT_STATE
            if state.exists() and (root / rel / REF_FILE).stat().st_mtime < cutoff:
                plan.items.append(Item(state, size_of(state), "optimiser state of an intermediate RL segment"))
    return plan
