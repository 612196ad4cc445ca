"""Checks that run before any flow starts: a user's mistake is reported in one line, at once.

Each check raises ``UserError`` naming the cause and the fix. The CLI prints that one line,
writes the traceback to a log file in the state folder and exits 2; no Prefect flow run or
MLflow run exists yet, so nothing earlier is touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from components.recipe import STAGES


class PreflightSettings(BaseSettings):
    """Thresholds of the checks (``POSTTRAIN_`` variables)."""

    model_config = SettingsConfigDict(env_prefix="POSTTRAIN_", env_file=".env", extra="ignore")

    min_free_mb: float = Field(200.0, description="refuse to start with less free space in the state/artifact folders")
    s3_timeout_s: float = Field(5.0, description="how long the S3 reachability check waits")


class UserError(Exception):
    """A mistake the user can fix: ``cause`` and ``fix`` make the one line the CLI prints."""

    def __init__(self, cause: str, fix: str) -> None:
        super().__init__(f"{cause}. Fix: {fix}")
        self.cause, self.fix = cause, fix


def parse_stages(text: str | None) -> list[str] | None:
    """``--stages`` as a list, or a UserError naming the valid stage names."""
    if not text:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in STAGES]
    if bad or not names:
        raise UserError(f"unknown stage(s) {', '.join(bad) or repr(text)}",
                        f"use --stages with one or more of: {', '.join(STAGES)}")
    return names


def check_writable(path: Path, what: str, env: str) -> None:
    """``path`` exists (or can be made) and a file can really be written there.

    A probe file, not ``os.access``: root passes ``os.access`` on read-only mounts.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".posttrain-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"the {what} {path} is not writable ({e.strerror or e})",
                        f"make it writable or point {env} at a writable folder") from e


def check_free_space(path: Path, what: str, min_mb: float) -> None:
    free = shutil.disk_usage(path).free / 2**20
    if free < min_mb:
        raise UserError(f"the {what} {path} has only {free:.0f} MiB free (needs {min_mb:.0f})",
                        "free some space (`posttrain gc` lists unreferenced payloads) or lower POSTTRAIN_MIN_FREE_MB")


def check_s3(settings, timeout_s: float) -> None:
    """The artifact root's bucket answers (with the configured endpoint and keys)."""
    import s3fs

    root = settings.remote_root
    opts = settings.storage_options()
    endpoint = opts.get("client_kwargs", {}).get("endpoint_url", "the default AWS endpoint")
    fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True, config_kwargs={
        "connect_timeout": timeout_s, "read_timeout": timeout_s, "retries": {"max_attempts": 1}})
    bucket = root.split("://", 1)[1].split("/", 1)[0]
    try:
        fs.ls(bucket, refresh=True)
    except FileNotFoundError as e:
        raise UserError(f"the S3 bucket {bucket!r} does not exist at {endpoint}",
                        f"create it or change POSTTRAIN_ARTIFACT_ROOT ({root})") from e
    except Exception as e:  # noqa: BLE001 - any failure to reach it is the same user-facing cause
        raise UserError(f"cannot reach the S3 artifact root {root} at {endpoint} ({type(e).__name__}: {e})",
                        "start the S3 server or fix POSTTRAIN_S3_ENDPOINT_URL / the keys") from e


def check_sources(rec) -> None:
    """Every curate source opens and yields at least one usable row (hub sources are not fetched)."""
    from components.data.errors import CurationError
    from components.data.rejects import RejectLog
    from components.data.sources import read_source

    for src in rec.curate.sources:
        path = getattr(src, "path", None)
        if path and "://" not in path and not Path(path).expanduser().exists():
            raise UserError(f"data source {src.name!r}: {src.type} file {path} does not exist",
                            "fix curate.sources[].path in the recipe (or with --set)")
        if src.type == "hf_hub":
            continue
        try:
            got = read_source(src, RejectLog())
        except CurationError as e:
            raise UserError(f"data source {src.name!r} is unusable: {e}", "fix the file or the source's fields") from e
        if not got.rows:
            bad = ", ".join(f"{n} {k}" for k, n in got.malformed.items()) or "no records"
            raise UserError(f"data source {src.name!r} ({path or src.type}) has no usable rows ({got.rows_in} read: {bad})",
                            "point it at a file with prompt/answer records or map its columns under fields")


def check_ray(settings, timeout_s: float) -> None:
    """With ``executor=ray``: an address is set, ray is installed and the cluster's GCS port answers."""
    import importlib.util
    import socket

    if settings.ray_address is None:
        raise UserError("POSTTRAIN_EXECUTOR=ray but POSTTRAIN_RAY_ADDRESS is not set",
                        "set POSTTRAIN_RAY_ADDRESS to the host:port `ray start --head` printed, or unset POSTTRAIN_EXECUTOR")
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("prefect_ray") is None:
        raise UserError("POSTTRAIN_EXECUTOR=ray but ray or prefect-ray is not installed",
                        "install the pinned ray and prefect-ray (requirements.lock) or unset POSTTRAIN_EXECUTOR")
    host, _, port = settings.ray_address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        raise UserError(f"the Ray cluster at POSTTRAIN_RAY_ADDRESS={settings.ray_address} does not answer "
                        f"({type(e).__name__}: {e})",
                        "start it (`ray start --head --node-ip-address 127.0.0.1 --port P`) or fix the address") from e


def preflight(rec, settings) -> None:
    """All checks of a run, cheapest first; the first failure is raised."""
    ps = PreflightSettings()
    check_writable(settings.state_path, "state folder", "POSTTRAIN_STATE_DIR")
    check_free_space(settings.state_path, "state folder", ps.min_free_mb)
    if settings.remote_root:
        check_s3(settings, ps.s3_timeout_s)
    else:
        root = Path(settings.artifact_uri.removeprefix("file://"))
        check_writable(root, "artifact root", "POSTTRAIN_ARTIFACT_ROOT")
        check_free_space(root, "artifact root", ps.min_free_mb)
    check_sources(rec)
    check_executor(settings, ps)


def check_executor(settings, ps: PreflightSettings | None = None) -> None:
    """The executor's checks: with ``executor=ray``, ``check_ray``; nothing locally."""
    if settings.executor == "ray":
        check_ray(settings, (ps or PreflightSettings()).s3_timeout_s)


def write_error_log(state: Path, exc: BaseException) -> Path:
    """The traceback, in ``<state>/logs`` (or the temp folder when that is not writable)."""
    text = "".join(traceback.format_exception(exc))
    name = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (state / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return folder / name
        except OSError:
            continue
    return Path(os.devnull)
