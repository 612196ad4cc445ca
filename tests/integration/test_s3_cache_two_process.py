"""The cache lives on S3: a smoke run in one process fills it; a second process with an empty
state folder (another machine, as far as it can tell) gets every stage as a cache hit from the
bucket alone. The S3 secret appears nowhere: no state file, no bucket object, no log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3fs
from s3_server import s3_server  # noqa: F401 - session fixture

from components.recipe import load_recipe

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "posttrain-cache"
PREFIX = "team"
# smoke: prepare_model, curate, estimate_difficulty (one shard: one task), rl_train as
# steps / segment_steps segment tasks, one compress task per variant, one evaluate_passes task per
# model (base, rl, each variant), evaluate, deploy: one cached task result each.
_SMOKE = load_recipe("smoke")
_VARIANTS = [v.name for v in _SMOKE.compress.variants]
N_SEGMENTS = -(-_SMOKE.rl_train.steps // _SMOKE.rl_train.segment_steps)
N_TASK_RESULTS = 3 + N_SEGMENTS + len(_VARIANTS) + (2 + len(_VARIANTS)) + 2
N_STAGES = 4 + len(_VARIANTS) + (2 + len(_VARIANTS)) + 2  # rl_train is one stage in the summary


def _env(state: Path, server: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "POSTTRAIN_", "AWS_", "MLFLOW_"))}
    env.update({
        "POSTTRAIN_STATE_DIR": str(state),
        "POSTTRAIN_PREFECT_API_URL": "http://127.0.0.1:9/api",  # nothing answers: ephemeral Prefect
        "POSTTRAIN_ARTIFACT_ROOT": f"s3://{BUCKET}/{PREFIX}",
        "POSTTRAIN_S3_ENDPOINT_URL": server["endpoint_url"],
        "POSTTRAIN_S3_ACCESS_KEY": server["key"],
        "POSTTRAIN_S3_SECRET_KEY": server["secret"],
    })
    return env


def _run(tmp_path: Path, name: str, server: dict) -> tuple[dict, float]:
    log = tmp_path / f"{name}.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        rc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--recipe", "smoke",
                             "--summary", str(tmp_path / f"{name}.json")],
                            env=_env(tmp_path / name, server), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            timeout=1200).returncode
    seconds = time.monotonic() - t0
    assert rc == 0, log.read_text(errors="replace")[-4000:]
    return json.loads((tmp_path / f"{name}.json").read_text()), seconds


def test_second_process_with_empty_state_hits_the_s3_cache(s3_server, tmp_path):  # noqa: F811
    fs = s3fs.S3FileSystem(key=s3_server["key"], secret=s3_server["secret"], skip_instance_cache=True,
                           client_kwargs={"endpoint_url": s3_server["endpoint_url"]})
    fs.mkdir(BUCKET)

    a, a_s = _run(tmp_path, "a", s3_server)
    assert not (tmp_path / "b").exists()
    b, b_s = _run(tmp_path, "b", s3_server)
    sa, sb = a["stages"], b["stages"]
    assert list(sa) == list(sb) and len(sa) == N_STAGES
    assert not any(s["cached"] for s in sa.values())
    assert all(s["cached"] for s in sb.values()), {k: v["cached"] for k, v in sb.items()}
    for name in sa:
        assert sb[name]["outputs"] == sa[name]["outputs"], name
        for ref in sa[name]["outputs"].values():
            assert ref["uri"].startswith(f"s3://{BUCKET}/{PREFIX}/"), ref["uri"]

    fs.invalidate_cache()
    # Prefect's cache records are objects in the bucket, one per task key.
    assert len(fs.find(f"{BUCKET}/{PREFIX}/prefect-results")) == N_TASK_RESULTS
    # MLflow run artifacts of run a went to the bucket: the parent's summary and curate's tables.
    mlruns = f"{BUCKET}/{PREFIX}/mlruns"
    logged = fs.find(mlruns)
    assert any(p.endswith(f"/{a['mlflow_run_id']}/artifacts/summary.json") for p in logged)
    assert any(f"/{sa['curate']['mlflow_run_id']}/artifacts/" in p for p in logged)

    # The secret is nowhere: not in either state folder (Prefect DB and results, MLflow DB,
    # caches), not in any bucket object, not in the runs' output.
    secret = s3_server["secret"].encode()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 50
    leaks = [str(p) for p in files if secret in p.read_bytes()]
    assert leaks == []
    objects = fs.find(BUCKET)
    assert len(objects) > N_TASK_RESULTS
    assert [o for o in objects if secret in fs.cat(o)] == []
    sys.stderr.write(f"\n[s3 two-process] run a {a_s:.1f} s (all computed), run b {b_s:.1f} s (all cached), "
                     f"{len(objects)} objects in the bucket\n")
