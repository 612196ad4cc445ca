from components.artifacts import ArtifactStore, sha256_dir
from components.caching import code_version, stage_key


def test_commit_and_digest_are_content_based(tmp_path):
    store = ArtifactStore(str(tmp_path / "root"), tmp_path / "cache")
    w = store.workdir("stage/k1")
    (w / "a.txt").write_text("hello")
    (w / "sub").mkdir()
    (w / "sub" / "b.txt").write_text("world")
    ref = store.commit(w, "stage/k1", kind="thing", meta={"n": 1})
    assert store.local_path(ref) == w and store.exists(ref)
    w2 = store.workdir("stage/k2")
    (w2 / "sub").mkdir()
    (w2 / "sub" / "b.txt").write_text("world")
    (w2 / "a.txt").write_text("hello")
    assert sha256_dir(w2) == ref.sha256  # same content, other folder, other write order
    (w2 / "a.txt").write_text("hello!")
    assert sha256_dir(w2) != ref.sha256


def test_workdir_starts_clean(tmp_path):
    store = ArtifactStore(str(tmp_path), tmp_path / "cache")
    w = store.workdir("x")
    (w / "stale").write_text("1")
    assert not (store.workdir("x") / "stale").exists()


def test_stage_key_depends_on_each_input():
    mods = ("components.caching",)
    base = stage_key("s", {"a": 1}, {"up": "d1"}, mods, "1")
    assert base == stage_key("s", {"a": 1}, {"up": "d1"}, mods, "1")
    assert base != stage_key("s", {"a": 2}, {"up": "d1"}, mods, "1")
    assert base != stage_key("s", {"a": 1}, {"up": "d2"}, mods, "1")
    assert base != stage_key("s", {"a": 1}, {"up": "d1"}, mods, "2")
    assert base != stage_key("t", {"a": 1}, {"up": "d1"}, mods, "1")
    assert base != stage_key("s", {"a": 1}, {"up": "d1"}, ("components.artifacts",), "1")


def test_code_version_hashes_package_sources():
    assert code_version(["components.rl"]) == code_version(["components.rl"])
    assert len(code_version(["kernels"])) == 16
