"""The artifact store, the settings and the curation sources against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import s3fs
from s3_server import s3_server  # noqa: F401 - session fixture

from components.artifacts import ArtifactRef, ArtifactStore, sha256_dir
from components.data.config import CurateConfig
from components.data.curate import load_rows, run_curation
from components.data.errors import CurationError
from components.settings import Settings

pytestmark = pytest.mark.slow

BUCKET = "posttrain-test"


def _opts(server: dict) -> dict:
    return {"key": server["key"], "secret": server["secret"], "client_kwargs": {"endpoint_url": server["endpoint_url"]}}


@pytest.fixture(scope="module")
def s3(s3_server) -> s3fs.S3FileSystem:  # noqa: F811
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **_opts(s3_server))
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    return fs


def _expected_digest(files: dict[str, bytes]) -> str:
    """sha256_dir by its definition: sorted relative names, each `name\\0sha256(content)\\n`."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).hexdigest().encode() + b"\n")
    return h.hexdigest()


PAYLOAD = {"weights.bin": bytes(range(256)) * 4, "sub/config.json": b'{"layers": 2}'}


def _commit(store: ArtifactStore, relpath: str) -> ArtifactRef:
    d = store.workdir(relpath)
    for name, data in PAYLOAD.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    return store.commit(d, relpath, kind="model", meta={"step": 3})


def test_artifact_store_roundtrip_through_s3(s3, s3_server, tmp_path: Path) -> None:  # noqa: F811
    root = f"s3://{BUCKET}/runs"
    writer = ArtifactStore(root, tmp_path / "cache-a", storage_options=_opts(s3_server))
    ref = _commit(writer, "rl_train/abc")

    assert ref.uri == f"s3://{BUCKET}/runs/rl_train/abc"
    assert ref.sha256 == _expected_digest(PAYLOAD)  # _ref.json is excluded from the digest
    s3.invalidate_cache()
    on_s3 = sorted(p.removeprefix(f"{BUCKET}/runs/rl_train/abc/") for p in s3.find(ref.uri))
    assert on_s3 == ["_ref.json", "sub/config.json", "weights.bin"]
    assert s3.cat(f"{ref.uri}/weights.bin") == PAYLOAD["weights.bin"]
    assert writer.exists(ref)

    # A second machine: same root, empty cache. It downloads once into the digest-keyed cache.
    reader = ArtifactStore(root, tmp_path / "cache-b", storage_options=_opts(s3_server))
    assert not (tmp_path / "cache-b").exists()
    local = reader.local_path(ref)
    assert local == tmp_path / "cache-b" / "by-digest" / ref.sha256
    assert sha256_dir(local) == ref.sha256
    assert (local / "sub" / "config.json").read_bytes() == PAYLOAD["sub/config.json"]
    assert json.loads((local / "_ref.json").read_text())["meta"] == {"step": 3}
    assert reader.local_path(ref) == local  # second call: served from the cache


def test_tampered_object_fails_the_digest_check(s3, s3_server, tmp_path: Path) -> None:  # noqa: F811
    root = f"s3://{BUCKET}/tamper"
    ref = _commit(ArtifactStore(root, tmp_path / "cache-a", storage_options=_opts(s3_server)), "compress/x")
    s3.pipe(f"{ref.uri}/weights.bin", b"not the weights")

    reader = ArtifactStore(root, tmp_path / "cache-b", storage_options=_opts(s3_server))
    with pytest.raises(OSError, match="digest mismatch"):
        reader.local_path(ref)
    # Nothing half-downloaded is left where a later call would trust it.
    assert not (tmp_path / "cache-b" / "by-digest" / ref.sha256).exists()
    assert list((tmp_path / "cache-b" / "by-digest").glob("*.tmp*")) == []


def test_settings_storage_options_reach_s3_and_hide_the_secret(s3, s3_server, tmp_path, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setenv("POSTTRAIN_S3_ENDPOINT_URL", s3_server["endpoint_url"])
    monkeypatch.setenv("POSTTRAIN_S3_ACCESS_KEY", s3_server["key"])
    monkeypatch.setenv("POSTTRAIN_S3_SECRET_KEY", s3_server["secret"])
    monkeypatch.setenv("POSTTRAIN_ARTIFACT_ROOT", f"s3://{BUCKET}/from-settings")
    settings = Settings(_env_file=None)

    assert settings.storage_options() == _opts(s3_server)
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert s3_server["secret"] not in text
        assert s3_server["key"] not in text

    # The options work against the server (a wrong secret would be refused with 403).
    store = ArtifactStore(settings.artifact_uri, tmp_path / "cache", storage_options=settings.storage_options())
    ref = _commit(store, "curate/s")
    assert store.exists(ref)
    wrong = s3fs.S3FileSystem(skip_instance_cache=True, **{**_opts(s3_server), "secret": "wrong-secret"})
    with pytest.raises(PermissionError):
        wrong.ls(BUCKET)


def _jsonl_bytes() -> tuple[bytes, int, dict[str, int]]:
    """Five good rows and one of each malformed kind; a blank line is not a record."""
    good = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 9)]]
    lines = [json.dumps(r).encode() for r in good]
    lines += [
        b'{"prompt": "What is 2 + 2?", "answer": ',  # bad_json: truncated object
        json.dumps({"prompt": "What is 4 + 4?"}).encode(),  # missing_field: no answer
        json.dumps({"prompt": 17, "answer": "17"}).encode(),  # wrong_type: prompt is a number
        b'{"prompt": "What is \xff?", "answer": "1"}',  # undecodable: 0xff is never UTF-8
        b"",  # blank line: skipped, not a record
    ]
    malformed = {"bad_json": 1, "missing_field": 1, "wrong_type": 1, "undecodable": 1}
    return b"\n".join(lines) + b"\n", len(good), malformed


def test_curation_reads_an_s3_jsonl_source(s3, s3_server, tmp_path: Path) -> None:  # noqa: F811
    data, n_good, malformed = _jsonl_bytes()
    s3.pipe(f"{BUCKET}/data.jsonl", data)
    cfg = CurateConfig.model_validate({
        "sources": [{"type": "jsonl", "name": "s3src", "path": f"s3://{BUCKET}/data.jsonl", "storage_options": _opts(s3_server)}],
        "eval_fraction": 0.0,
    })
    result = run_curation(cfg, tmp_path / "out")

    m = result.metrics
    assert m["rows_in"] == n_good + sum(malformed.values()) == 9
    assert m["malformed"] == 4
    assert m["rows_out"] == n_good == 5
    assert m["eval_rows"] == 0
    rows = load_rows(result.train_path)
    assert sorted(r["answer"] for r in rows) == ["11", "15", "18", "3", "7"]
    assert {r["source"] for r in rows} == {"s3src"}
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["malformed"] == malformed
    # Credentials never reach the written artifacts.
    for f in (result.manifest_path, result.card_path, result.rejects_path):
        assert s3_server["secret"] not in f.read_text(errors="replace")


def test_missing_s3_object_names_the_source(s3, s3_server, tmp_path: Path) -> None:  # noqa: F811
    cfg = CurateConfig.model_validate({
        "sources": [{"type": "jsonl", "name": "s3src", "path": f"s3://{BUCKET}/absent.jsonl", "storage_options": _opts(s3_server)}],
    })
    with pytest.raises(CurationError, match=r"source 's3src' \(jsonl\): cannot open 's3://posttrain-test/absent.jsonl'"):
        run_curation(cfg, tmp_path / "out")
