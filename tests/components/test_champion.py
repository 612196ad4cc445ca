"""The champion resolved to a local artifact, through a real sqlite MLflow registry and a real
artifact store: a local folder, and a remote (fsspec ``memory://``) root downloaded by digest."""

from __future__ import annotations

import shutil
import uuid

import pytest

from components.artifacts import ArtifactStore
from components.champion import payload_uri, resolve_champion
from components.settings import Settings
from components.tracking import Tracker


@pytest.fixture(scope="module")
def trk(tmp_path_factory):
    return Tracker(Settings(state_dir=tmp_path_factory.mktemp("state")))


def _compressed_payload(store: ArtifactStore, relpath: str):
    """A compressed variant's payload as the compress stage lays it out: dense twin and export."""
    work = store.workdir(relpath)
    for sub, text in (("model", '{"dense": true}'), ("compressed", '{"quantization_config": {}}')):
        (work / sub).mkdir()
        (work / sub / "config.json").write_text(text)
    return store.commit(work, relpath, kind="compressed")


def _register(trk: Tracker, name: str, source: str, sha: str, alias: str = "champion") -> str:
    """What the deploy stage does: the serving subfolder as source, the payload digest as a tag."""
    version = trk.register_model(name, source, trk.start_run("deploy"), {"model_sha256": sha})
    trk.set_alias(name, alias, version)
    return version


def test_payload_uri_strips_only_a_payload_subfolder():
    assert payload_uri("s3://b/compress/k1/compressed") == "s3://b/compress/k1"
    assert payload_uri("/a/rl_segment/k2/model/") == "/a/rl_segment/k2"
    assert payload_uri("/a/prepare_model/k3") == "/a/prepare_model/k3"


def test_local_store_champion_names_payload_dense_and_serving_folders(trk, tmp_path):
    store = ArtifactStore(str(tmp_path / "artifacts"), tmp_path / "cache")
    assert resolve_champion(trk, store, "local") is None  # nothing registered yet
    ref = _compressed_payload(store, "compress/k1")
    version = _register(trk, "local", f"{ref.uri}/compressed", ref.sha256)

    champ = resolve_champion(trk, store, "local")
    assert champ is not None and champ.version == version
    assert (champ.ref.uri, champ.ref.sha256) == (ref.uri, ref.sha256)  # the payload, as a candidate's handle
    assert champ.model_dir == champ.path / "model" and champ.serving_dir == champ.path / "compressed"
    assert resolve_champion(trk, store, "local", alias="previous") is None

    # A payload removed from the store (state folder cleaned): no usable champion, no error.
    shutil.rmtree(champ.path)
    assert resolve_champion(trk, store, "local") is None


def test_remote_store_champion_is_downloaded_once_and_digest_checked(trk, tmp_path):
    root = f"memory://champion-{uuid.uuid4().hex}"
    writer = ArtifactStore(root, tmp_path / "writer-cache")
    ref = _compressed_payload(writer, "compress/k1")
    _register(trk, "remote", f"{ref.uri}/compressed", ref.sha256)

    reader = ArtifactStore(root, tmp_path / "reader-cache")  # another machine: empty cache
    champ = resolve_champion(trk, reader, "remote")
    assert champ is not None and champ.path == tmp_path / "reader-cache" / "by-digest" / ref.sha256
    assert (champ.serving_dir / "config.json").read_text() == '{"quantization_config": {}}'
    assert (champ.model_dir / "config.json").read_text() == '{"dense": true}'

    # Remote bytes that no longer match the registered digest are refused.
    writer.fs.pipe(f"{ref.uri}/model/config.json", b'{"dense": false}')
    other = ArtifactStore(root, tmp_path / "third-cache")
    assert resolve_champion(trk, other, "remote") is None
