"""Task: evaluate all candidates (and the serving champion) and run the promotion gate.

Each model's greedy and sampled passes are kept as small payloads keyed by the model's digest,
the evaluation config (gate excluded), the eval split's digest and the code version: a model
evaluated the same way before (the base model of another recipe, a champion that was a
candidate) is read back instead of evaluated again.
"""

from __future__ import annotations

import json
from pathlib import Path

from components.artifacts import ArtifactRef, ArtifactStore
from components.evaluation.config import EvaluateConfig
from components.stages import evaluate as stage
from tasks.common import GPU, execute, make_key, stage_task, store

PASS_FILE = "pass.json"


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


class StorePassCache:
    """:class:`components.stages.evaluate.PassCache` on the artifact store (``evaluate_pass/<key>``)."""

    def __init__(self, st: ArtifactStore, cfg: EvaluateConfig, digests: dict[str, str], dataset: ArtifactRef,
                 read: bool = True):
        self.st, self.cfg, self.digests, self.dataset, self.read = st, cfg, digests, dataset, read

    def _relpath(self, name: str, phase: str) -> str:
        return f"evaluate_pass/{pass_key(self.cfg, self.digests[name], self.dataset, phase)}"

    def get(self, name: str, phase: str) -> dict | None:
        if not self.read:
            return None
        uri = f"{self.st.uri_for(self._relpath(name, phase))}/{PASS_FILE}"
        try:
            if self.st.remote:
                return json.loads(self.st.fs.cat_file(uri))
            return json.loads(Path(uri).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def put(self, name: str, phase: str, value: dict) -> None:
        relpath = self._relpath(name, phase)
        work = self.st.workdir(relpath)
        (work / PASS_FILE).write_text(json.dumps(value))
        self.st.commit(work, relpath, kind="evaluation_pass", meta={"phase": phase})


@stage_task("evaluate", key=key_for, tags=GPU)
def evaluate_task(run_id: str, cfg: EvaluateConfig, dataset: ArtifactRef, candidates: dict[str, ArtifactRef],
                  champion: ArtifactRef | None = None, champion_is: str | None = None):
    st = store()
    paths = {n: st.local_path(r) for n, r in candidates.items()}
    champ = ("champion", st.local_path(champion)) if champion is not None else None
    digests = {n: r.sha256 for n, r in candidates.items()}
    if champion is not None:
        digests["champion"] = champion.sha256
    cache = StorePassCache(st, cfg, digests, dataset, read=not cfg.refresh)
    return execute("evaluate", key_for(cfg, dataset, candidates, champion), run_id,
                   cfg.model_dump(mode="json", exclude={"refresh"}), "evaluation",
                   lambda out, ctx: stage.run(cfg, paths, st.local_path(dataset), out, ctx, champion=champ,
                                              champion_is=champion_is, cache=cache))
