"""The registry's champion as a local artifact: one resolver for every caller.

The deploy stage registers a version's weights (its ``weights_uri`` tag; the version's MLflow
source is its model card) as the candidate's payload URI, or a subfolder of it (``model/`` holds the dense transformers weights of an RL checkpoint or a compressed variant,
``compressed/`` the compressed-tensors export vLLM serves), and tags the version with the
payload's digest (``model_sha256``). :func:`resolve_champion` inverts that: it finds the
payload, makes it local (a remote store downloads it once per digest and checks the digest), and
names the folders each caller needs: the payload (evaluation, as for any candidate), the dense
weights (retraining), the serving folder (vLLM).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from components.artifacts import ArtifactRef, ArtifactStore, model_folder, serving_folder
from components.tracking import weights_uri

# Subfolders of a payload that a registered source may point at.
PAYLOAD_SUBFOLDERS = ("model", "compressed")


class _Registry(Protocol):
    def version_by_alias(self, name: str, alias: str) -> Any: ...


def payload_uri(source: str) -> str:
    """The payload a registered ``source`` belongs to (its ``model/`` or ``compressed/`` stripped)."""
    uri = source.rstrip("/")
    head, _, last = uri.rpartition("/")
    return head if last in PAYLOAD_SUBFOLDERS and head else uri


@dataclass(frozen=True)
class Champion:
    """A registry version made local. ``ref`` is its payload's handle (digest = ``model_sha256``)."""

    version: str
    ref: ArtifactRef
    path: Path

    @property
    def model_dir(self) -> Path:
        return model_folder(self.path)

    @property
    def serving_dir(self) -> Path:
        return serving_folder(self.path)


def resolve_champion(registry: _Registry, store: ArtifactStore, name: str, alias: str = "champion") -> Champion | None:
    """The version of ``name`` holding ``alias``, as a local payload; None when there is none or its
    payload is gone (a removed state folder, a digest that no longer matches)."""
    mv = registry.version_by_alias(name, alias)
    if mv is None:
        return None
    ref = ArtifactRef(uri=payload_uri(weights_uri(mv)), sha256=mv.tags.get("model_sha256", ""), kind="model")
    try:
        path = store.local_path(ref)
    except (FileNotFoundError, OSError):
        return None
    return Champion(version=str(mv.version), ref=ref, path=path)
