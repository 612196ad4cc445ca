"""Pipeline properties: determinism, the eval split, caps and mixing, shards and manifest."""

import hashlib
import json
from pathlib import Path

from components.data.config import CurateConfig
from components.data.curate import load_rows, run_curation


def _cfg(**over) -> CurateConfig:
    cfg = {"sources": [
        {"type": "arithmetic", "name": "arith", "n": 120, "digits": [1, 2], "operators": ["+", "-", "*", "/"],
         "num_ops": [1, 2], "seed": 1},
        {"type": "countdown", "name": "cd", "n": 60, "seed": 2},
    ], "eval_fraction": 0.2, "seed": 5}
    cfg.update(over)
    return CurateConfig.model_validate(cfg)


def test_same_config_same_digest_and_seed_changes_it(tmp_path: Path) -> None:
    a = run_curation(_cfg(), tmp_path / "a")
    b = run_curation(_cfg(), tmp_path / "b")
    assert a.digest == b.digest and a.metrics == b.metrics
    assert load_rows(a.train_path) == load_rows(b.train_path)
    assert json.loads(a.manifest_path.read_text()) == json.loads(b.manifest_path.read_text())
    c = run_curation(_cfg(seed=6), tmp_path / "c")
    assert c.digest != a.digest


def _unit(seed: int, salt: str, row_id: str) -> float:
    return int(hashlib.sha256(f"{seed}:{salt}:{row_id}".encode()).hexdigest()[:15], 16) / 16**15


def test_eval_split_by_seeded_id_hash(tmp_path: Path) -> None:
    res = run_curation(_cfg(), tmp_path / "o")
    train, evals = load_rows(res.train_path), load_rows(res.eval_path)
    assert evals and not ({r["id"] for r in train} & {r["id"] for r in evals})
    # the rule, recomputed independently: eval iff sha256("5:split:<id>") maps below 0.2
    assert all(_unit(5, "split", r["id"]) < 0.2 for r in evals)
    assert all(_unit(5, "split", r["id"]) >= 0.2 for r in train)
    assert res.metrics["eval_rows"] == len(evals) and res.metrics["rows_out"] == len(train)
    # accounting: nothing is lost without a count (180 generated rows)
    assert res.metrics["rows_in"] == 180 == len(train) + len(evals) + sum(f["removed"] for f in res.filter_counts)
    capped = run_curation(_cfg(eval_max_rows=5), tmp_path / "p")
    cap_eval = load_rows(capped.eval_path)
    # the 5 eval ids are those with the smallest split hash; the others return to train
    smallest = sorted((r["id"] for r in evals), key=lambda i: _unit(5, "split", i))[:5]
    assert sorted(r["id"] for r in cap_eval) == sorted(smallest)


def test_caps_and_weighted_mixing(tmp_path: Path) -> None:
    over = {"eval_fraction": 0.0, "total_rows": 40}
    cfg = _cfg(**over)
    cfg.sources[0].weight, cfg.sources[1].weight = 3.0, 1.0
    res = run_curation(cfg, tmp_path / "o")
    counts = {s: sum(r["source"] == s for r in load_rows(res.train_path)) for s in ("arith", "cd")}
    assert counts == {"arith": 30, "cd": 10}  # 40 * 3/4 and 40 * 1/4
    assert res.metrics["capped"] == 180 - 40
    # a source capped below its share gives the rest to the other: cd max 4 -> arith 36
    cfg.sources[1].max_rows = 4
    res = run_curation(cfg, tmp_path / "p")
    counts = {s: sum(r["source"] == s for r in load_rows(res.train_path)) for s in ("arith", "cd")}
    assert counts == {"arith": 36, "cd": 4}


def test_shards_manifest_and_card(tmp_path: Path) -> None:
    cfg = _cfg(eval_fraction=0.0, shard_rows=50, sources=[
        {"type": "arithmetic", "name": "arith", "n": 120, "digits": 2, "operators": ["+"], "seed": 1},
        {"type": "jsonl", "name": "s3ish", "path": str(tmp_path / "x.jsonl"), "storage_options": {"key": "SECRET"}},
    ])
    (tmp_path / "x.jsonl").write_text(json.dumps({"prompt": "Spell the word cat backwards", "answer": "tac"}) + "\n")
    res = run_curation(cfg, tmp_path / "o")
    shards = sorted(p.name for p in res.train_path.glob("*.parquet"))
    assert shards == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]  # 121 = 50 + 50 + 21
    manifest = json.loads(res.manifest_path.read_text())
    assert manifest["splits"]["train"] == {"rows": 121, "files": [f"train/{s}" for s in shards]}
    assert manifest["schema"] == {"id": "string", "prompt": "string", "answer": "string", "system": "string?",
                                  "task": "string", "source": "string", "meta": "string"}
    card = res.card_path.read_text()
    assert "SECRET" not in card and "SECRET" not in res.manifest_path.read_text()
    assert "## Example train rows" in card and "| s3ish | jsonl |" in card
    rows = load_rows(res.train_path)
    assert len(rows) == 121 and len({r["id"] for r in rows}) == 121


def test_train_prompt_overlapping_eval_split_is_removed(tmp_path: Path) -> None:
    # every prompt is duplicated with a prefix; whichever copy lands in eval removes the other
    prompts = [f"What is {a} + {a + 7}? Give only the final number." for a in range(40)]
    lines = [{"prompt": p, "answer": "0"} for p in prompts] + [{"prompt": "Quick one. " + p, "answer": "0"}
                                                                for p in prompts]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    cfg = CurateConfig.model_validate({"sources": [{"type": "jsonl", "name": "d", "path": str(tmp_path / "d.jsonl")}],
                                       "eval_fraction": 0.3, "seed": 0, "dedup": {"near": False}})
    res = run_curation(cfg, tmp_path / "o")
    evals = {r["prompt"] for r in load_rows(res.eval_path)}
    # a plain eval prompt removes its prefixed train copy (it contains the whole short prompt)
    expected = sum(1 for p in prompts if p in evals and "Quick one. " + p not in evals)
    # a prefixed eval prompt contains the plain train copy (short prompt inside an eval prompt)
    expected += sum(1 for p in prompts if "Quick one. " + p in evals and p not in evals)
    assert expected > 0 and res.metrics["contaminated"] == expected
    train = {r["prompt"] for r in load_rows(res.train_path)}
    assert not any(e in t or t in e for e in evals for t in train)
