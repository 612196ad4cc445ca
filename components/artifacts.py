"""Artifact store: stage payloads live here; stages pass only small ``ArtifactRef`` handles.

The root is a local folder by default or ``s3://bucket/prefix`` through s3fs. Stages write
into a local work folder, then ``commit`` digests it and (for remote roots) uploads it.
Readers call ``local_path`` which downloads into a digest-keyed local cache when needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import fsspec
from pydantic import BaseModel, Field

REF_FILE = "_ref.json"
# Run records kept with a payload but outside its digest: timings, memory peaks, host paths,
# ports, pids (what differs between two runs that computed the same result). Stages write such
# files under this folder; their figures also go to MLflow as metrics.
RUN_INFO_DIR = "_run_info"
_MEASURED_SUFFIXES = ("_s", "_seconds", "/seconds", "_per_s", "_ms", "_mb_peak")
_MEASURED_NAMES = ("peak_rss_mb", "seconds", "pid", "port", "host", "hostname")


def is_measurement(name: str) -> bool:
    """A figure that measures the run (wall clock, throughput, memory, process) rather than
    the result: it must never enter a digest. By name: ``*_s``, ``*_seconds``, ``*_per_s``,
    ``time_*``, ``peak_rss_mb`` ... (every timing in posttrain is named so)."""
    leaf = name.rsplit(".", 1)[-1]
    return (leaf in _MEASURED_NAMES or leaf.startswith("time_") or leaf.endswith(_MEASURED_SUFFIXES))


def split_measurements(figures: dict) -> tuple[dict, dict]:
    """(defining figures, measurements) of one flat dict, see ``is_measurement``."""
    keep = {k: v for k, v in figures.items() if not is_measurement(k)}
    return keep, {k: v for k, v in figures.items() if is_measurement(k)}


def run_info_dir(payload_dir: Path) -> Path:
    """The payload's undigested run-records folder (created)."""
    d = Path(payload_dir) / RUN_INFO_DIR
    d.mkdir(parents=True, exist_ok=True)
    return d


class ArtifactRef(BaseModel):
    """Handle to a stored payload: where it is and what it contains."""

    uri: str
    sha256: str
    kind: str
    meta: dict[str, Any] = Field(default_factory=dict)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _digested(path: Path, f: Path) -> bool:
    rel = f.relative_to(path).parts
    return f.is_file() and f.name != REF_FILE and rel[0] != RUN_INFO_DIR


def sha256_dir(path: Path) -> str:
    """Digest of a folder's content (relative names + file digests), independent of mtimes.
    ``_ref.json`` and the ``_run_info/`` run records are not part of it."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if _digested(path, p)):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(b"\0")
        h.update(sha256_file(f).encode())
        h.update(b"\n")
    return h.hexdigest()


# A payload's layout: RL checkpoints and compressed variants keep dense transformers weights under
# ``model/``; a compressed variant adds its compressed-tensors export under ``compressed/``.
def model_folder(path: Path) -> Path:
    """Dense transformers weights of a payload: ``model/`` when it has one, else the folder itself."""
    path = Path(path)
    return path / "model" if (path / "model" / "config.json").exists() else path


def serving_folder(path: Path) -> Path:
    """What vLLM should load: the compressed-tensors export where there is one, else the dense weights."""
    path = Path(path)
    return path / "compressed" if (path / "compressed" / "config.json").exists() else model_folder(path)


class ArtifactStore:
    def __init__(self, root: str, cache_dir: Path, storage_options: dict | None = None):
        self.root = root.rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.remote = "://" in self.root and not self.root.startswith("file://")
        self._opts = storage_options or {}
        self.work_root = self.cache_dir / "work" if self.remote else Path(self.root.removeprefix("file://"))

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        protocol = self.root.split("://", 1)[0] if self.remote else "file"
        return fsspec.filesystem(protocol, **(self._opts if self.remote else {}))

    def uri_for(self, relpath: str) -> str:
        return f"{self.root}/{relpath}" if self.remote else str(self.work_root / relpath)

    def workdir(self, relpath: str, clean: bool = True) -> Path:
        """A local folder to write a payload into; removed first so retries start clean."""
        d = self.work_root / relpath
        if clean and d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def commit(self, local_dir: Path, relpath: str, kind: str, meta: dict | None = None) -> ArtifactRef:
        local_dir = Path(local_dir)
        ref = ArtifactRef(uri=self.uri_for(relpath), sha256=sha256_dir(local_dir), kind=kind, meta=meta or {})
        (local_dir / REF_FILE).write_text(ref.model_dump_json(indent=2))
        if self.remote:
            fs = self.fs
            if fs.exists(ref.uri):
                fs.rm(ref.uri, recursive=True)
            fs.put(str(local_dir) + "/", ref.uri, recursive=True)
            self._link_cache(local_dir, ref.sha256)
        return ref

    def _link_cache(self, local_dir: Path, digest: str) -> None:
        target = self.cache_dir / "by-digest" / digest
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(local_dir, target)

    def exists(self, ref: ArtifactRef) -> bool:
        if self.remote:
            return self.fs.exists(ref.uri)
        return Path(ref.uri).exists()

    def local_path(self, ref: ArtifactRef) -> Path:
        """A local folder holding the payload (downloaded once per digest for remote roots)."""
        if not ref.uri.startswith(("s3://", "gs://", "memory://")) and "://" not in ref.uri:
            p = Path(ref.uri)
            if not p.exists():
                raise FileNotFoundError(f"artifact {ref.kind} missing at {p} (state folder removed?)")
            return p
        target = self.cache_dir / "by-digest" / ref.sha256
        if target.exists():
            return target
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        fs = fsspec.filesystem(ref.uri.split("://", 1)[0], **self._opts)
        fs.get(ref.uri.rstrip("/") + "/", str(tmp), recursive=True)
        got = sha256_dir(tmp)
        if got != ref.sha256:
            shutil.rmtree(tmp, ignore_errors=True)
            raise IOError(f"artifact {ref.uri} digest mismatch: expected {ref.sha256}, got {got}")
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same download first
            if not target.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        return target


def read_ref(local_dir: Path) -> ArtifactRef:
    return ArtifactRef.model_validate(json.loads((Path(local_dir) / REF_FILE).read_text()))
