"""Task: evaluate all candidates (and the serving champion) and run the promotion gate.

Each model's greedy and sampled passes are kept as small JSON files in the state folder
(``cache/evaluate_pass/<key>.json``), keyed by the model's digest, the evaluation config (gate
excluded), the eval split's digest and the code version: a model evaluated the same way before
(the base model of another recipe, a champion that was a candidate) is read back instead of
evaluated again. They are a cache, not payloads: nothing's lineage needs them, so ``posttrain gc``
leaves them out, and with a remote artifact root each machine keeps its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from components.artifacts import ArtifactRef
from components.evaluation.config import EvaluateConfig
from components.settings import get_settings
from components.stages import evaluate as stage
from tasks.common import GPU, execute, make_key, stage_task, store


def key_for(cfg: EvaluateConfig, dataset: ArtifactRef, candidates: dict[str, ArtifactRef],
            champion: ArtifactRef | None = None) -> str:
    """A champion that is one of the candidates is passed as ``champion_is`` (not ``champion``):
    it adds no evidence, so the rerun of an unchanged recipe keeps its key."""
    upstream: dict[str, ArtifactRef | str | None] = {f"candidate:{n}": r for n, r in candidates.items()}
    upstream["dataset"] = dataset
    upstream["champion"] = champion.sha256 if champion is not None else None
    return make_key("evaluate", cfg.model_dump(mode="json", exclude={"refresh"}), upstream, stage.__name__)


def pass_key(cfg: EvaluateConfig, model_sha256: str, dataset: ArtifactRef, phase: str) -> str:
    conf = {"eval": cfg.model_dump(mode="json", exclude={"refresh", "gate"}), "phase": phase}
    return make_key("evaluate_pass", conf, {"model": model_sha256, "dataset": dataset}, stage.__name__)


class FilePassCache:
    """:class:`components.stages.evaluate.PassCache` as one JSON file per pass under ``folder``."""

    def __init__(self, folder: Path, cfg: EvaluateConfig, digests: dict[str, str], dataset: ArtifactRef,
                 read: bool = True):
        self.folder, self.cfg, self.digests, self.dataset, self.read = folder, cfg, digests, dataset, read

    def _file(self, name: str, phase: str) -> Path:
        return self.folder / f"{pass_key(self.cfg, self.digests[name], self.dataset, phase)}.json"

    def get(self, name: str, phase: str) -> dict | None:
        if not self.read:
            return None
        try:
            return json.loads(self._file(name, phase).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def put(self, name: str, phase: str, value: dict) -> None:
        path = self._file(name, phase)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(value))
        tmp.replace(path)  # atomic: a concurrent reader sees the whole file or none


def passes_key(cfg: EvaluateConfig, name: str, model: ArtifactRef, dataset: ArtifactRef) -> str:
    """One model's passes: by its digest, not its name (the same model under another name, the base
    model of another recipe, is read back); ``name`` is only a label."""
    conf = {"eval": cfg.model_dump(mode="json", exclude={"refresh", "gate"})}
    return make_key("evaluate_passes", conf, {"model": model, "dataset": dataset}, stage.__name__)


def _pass_cache(cfg: EvaluateConfig, digests: dict[str, str], dataset: ArtifactRef) -> FilePassCache:
    return FilePassCache(get_settings().state_path / "cache" / "evaluate_pass", cfg, digests, dataset,
                         read=not cfg.refresh)


@stage_task("evaluate_passes", key=passes_key, tags=GPU)
def evaluate_passes_task(run_id: str, cfg: EvaluateConfig, name: str, model: ArtifactRef, dataset: ArtifactRef):
    """One model's greedy and sampled passes (the evaluation's fan-out unit); the gate reads them."""
    st = store()
    cache = _pass_cache(cfg, {name: model.sha256}, dataset)
    return execute("evaluate_passes", passes_key(cfg, name, model, dataset), run_id,
                   {"model": name, **cfg.model_dump(mode="json", exclude={"refresh", "gate"})}, "evaluation_passes",
                   lambda out, ctx: stage.run_passes(cfg, name, st.local_path(model), st.local_path(dataset), out, ctx,
                                                     cache=cache), meta={"model": name})


@stage_task("evaluate", key=key_for, tags=GPU)
def evaluate_task(run_id: str, cfg: EvaluateConfig, dataset: ArtifactRef, candidates: dict[str, ArtifactRef],
                  champion: ArtifactRef | None = None, champion_is: str | None = None,
                  passes: dict[str, ArtifactRef] | None = None):
    """The gate over every model's passes. ``passes`` (not in the key): the pass tasks' outputs by
    model name; a model without one is evaluated here."""
    st = store()
    paths = {n: st.local_path(r) for n, r in candidates.items()}
    champ = ("champion", st.local_path(champion)) if champion is not None else None
    digests = {n: r.sha256 for n, r in candidates.items()}
    if champion is not None:
        digests["champion"] = champion.sha256
    handed = {n: stage.read_passes(st.local_path(r)) for n, r in (passes or {}).items()}
    cache = stage.DictPassCache(handed, _pass_cache(cfg, digests, dataset))
    return execute("evaluate", key_for(cfg, dataset, candidates, champion), run_id,
                   cfg.model_dump(mode="json", exclude={"refresh"}), "evaluation",
                   lambda out, ctx: stage.run(cfg, paths, st.local_path(dataset), out, ctx, champion=champ,
                                              champion_is=champion_is, cache=cache))
