"""The smoke recipe end to end under ``prefect_test_harness``: all stages run, a second run is
all cache hits, and changing only a compress option recomputes compress/evaluate/deploy only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def flow_env(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    old = dict(os.environ)
    os.environ["POSTTRAIN_STATE_DIR"] = str(state)
    for k in ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL"):
        os.environ.pop(k, None)
    from components.settings import configure_process_env, reset_settings

    reset_settings()
    configure_process_env()
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield state
    os.environ.clear()
    os.environ.update(old)
    reset_settings()


STAGES = ["prepare_model", "curate", "estimate_difficulty", "rl_train", "compress:rtn-w8",
          "compress:magnitude-2:4", "evaluate_passes:base", "evaluate_passes:rl", "evaluate_passes:rtn-w8",
          "evaluate_passes:magnitude-2:4", "evaluate", "deploy"]


def test_smoke_flow_runs_then_caches(flow_env):
    from components.settings import get_settings
    from components.tracking import Tracker
    from flows.post_training import post_training

    first = post_training(recipe="smoke")
    assert list(first["stages"]) == STAGES
    assert not any(s["cached"] for s in first["stages"].values())
    for s in first["stages"].values():
        for ref in s["outputs"].values():
            assert len(ref["sha256"]) == 64 and ref["uri"]
    assert first["stages"]["curate"]["metrics"]["rows_out"] > 0
    assert first["stages"]["deploy"]["metrics"]["registered"] == 1.0

    second = post_training(recipe="smoke")
    assert all(s["cached"] for s in second["stages"].values()), str({k: v["cached"] for k, v in second["stages"].items()})
    first_time = sum(s["seconds"] for s in first["stages"].values())
    second_time = sum(s["seconds"] for s in second["stages"].values())
    assert second_time <= first_time / 10
    for name in STAGES:
        assert second["stages"][name]["outputs"] == first["stages"][name]["outputs"]

    # MLflow: a parent run with one child per stage, cache-hit tags on the second run.
    trk = Tracker(get_settings())
    children = trk.child_runs(second["mlflow_run_id"])
    assert {c.data.tags["mlflow.runName"] for c in children} >= {"prepare_model", "curate", "estimate_difficulty",
                                                                 "rl_train", "evaluate", "deploy"}
    assert all(c.data.tags.get("cache_hit") == "true" for c in children)
    rl_run = next(c for c in trk.child_runs(first["mlflow_run_id"]) if c.data.tags["mlflow.runName"] == "rl_train")
    assert len(trk.metric_history(rl_run.info.run_id, "reward_mean")) == 4  # one point per RL step

    # Changing one compress option recomputes that variant, evaluate and deploy, nothing upstream.
    # (a W8A8 variant: its dense twin carries the activation sidecar that evaluation loads)
    third = post_training(recipe="smoke", overrides=["compress.variants=[rtn-w8a8-sq, magnitude-2:4]"])
    cached = {k: v["cached"] for k, v in third["stages"].items()}
    assert cached == {"prepare_model": True, "curate": True, "estimate_difficulty": True, "rl_train": True,
                      "compress:rtn-w8a8-sq": False, "compress:magnitude-2:4": True,
                      "evaluate_passes:base": True, "evaluate_passes:rl": True,
                      "evaluate_passes:rtn-w8a8-sq": False, "evaluate_passes:magnitude-2:4": True,
                      # the registry's champion (rtn-w8 of the first run) is no candidate now: its
                      # passes are a cache hit by its digest
                      "evaluate_passes:champion": True, "evaluate": False, "deploy": False}
    w8a8 = Path(next(iter(third["stages"]["compress:rtn-w8a8-sq"]["outputs"].values()))["uri"])
    assert json.loads((w8a8 / "model" / "activation_quant.json").read_text())["num_bits"] == 8
    qc = json.loads((w8a8 / "compressed" / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "int-quantized" and qc["config_groups"]["group_0"]["input_activations"]["num_bits"] == 8


def test_stage_subset_and_bad_stage(flow_env):
    from flows.post_training import post_training

    s = post_training(recipe="smoke", stages=["curate"])
    assert list(s["stages"]) == ["prepare_model", "curate"]
    for key in ("rows_in", "rows_out", "exact_duplicates", "near_duplicates", "malformed", "unverifiable",
                "contaminated", "too_long", "eval_rows"):
        assert key in s["stages"]["curate"]["metrics"]
    with pytest.raises(Exception, match="unknown stage"):
        post_training(recipe="smoke", stages=["nope"])


def test_difficulty_estimate_is_reused_across_recipes_and_keyed_on_sampling(flow_env):
    from flows.post_training import post_training

    first = post_training(recipe="smoke", stages=["estimate_difficulty"])
    # Another recipe that shares data, model and sampling settings (only the selection policy and
    # the RL settings differ) reuses the estimate.
    other = post_training(recipe="smoke", stages=["estimate_difficulty"],
                          overrides=["estimate_difficulty.selection.keep_unsolved_fraction=0.5", "rl_train.steps=2"])
    assert other["stages"]["estimate_difficulty"]["cached"] is True
    assert other["stages"]["estimate_difficulty"]["outputs"] == first["stages"]["estimate_difficulty"]["outputs"]
    hotter = post_training(recipe="smoke", stages=["estimate_difficulty"],
                           overrides=["estimate_difficulty.temperature=0.7"])
    assert hotter["stages"]["estimate_difficulty"]["cached"] is False
    m = first["stages"]["estimate_difficulty"]["metrics"]
    assert m["samples_used"] + m["samples_saved"] == m["samples_fixed_k"]


def _evaluation(summary: dict) -> Path:
    return Path(summary["stages"]["evaluate"]["outputs"]["evaluation"]["uri"])


def test_evaluation_reuses_passes_by_model_digest_and_skips_sampling_after_a_failed_greedy_gate(flow_env):
    from flows.post_training import post_training

    a = post_training(recipe="smoke", stages=["evaluate"], overrides=["rl_train.steps=2"])
    # Another recipe that differs only in rl_train: the RL checkpoint and its variants change, the
    # base model does not, so its passes are read back rather than run again.
    b = post_training(recipe="smoke", stages=["evaluate"], overrides=["rl_train.steps=2", "rl_train.lr=5.0e-4"])
    assert b["stages"]["evaluate"]["cached"] is False and b["stages"]["rl_train"]["cached"] is False
    assert b["stages"]["rl_train"]["outputs"] != a["stages"]["rl_train"]["outputs"]
    passes = json.loads((_evaluation(b) / "_run_info" / "passes.json").read_text())
    assert passes == b["stages"]["evaluate"]["passes"]
    # One pass task per model (the fan-out unit): base's is a cache hit, rl's is computed; the
    # gate reads every pass from them.
    assert b["stages"]["evaluate_passes:base"]["cached"] is True
    assert b["stages"]["evaluate_passes:base"]["outputs"] == a["stages"]["evaluate_passes:base"]["outputs"]
    assert b["stages"]["evaluate_passes:rl"]["cached"] is False
    assert passes["base"] == passes["rl"] == {"greedy": "cached", "sampled": "cached"}
    reports_a = json.loads((_evaluation(a) / "reports.json").read_text())
    reports_b = json.loads((_evaluation(b) / "reports.json").read_text())
    assert reports_b["base"] == reports_a["base"]
    timings = [json.loads((_evaluation(s) / "_run_info" / "timings.json").read_text())["base"] for s in (a, b)]
    assert timings[0] == timings[1]  # the greedy latency of the run that measured it, not a new one

    # A gate no contender can pass on its greedy figures (101 points over base): their sampled
    # pass is skipped, and their rows say so; the references (base, and the registry's champion
    # when an earlier test promoted one) are measured in full.
    c = post_training(recipe="smoke", stages=["evaluate"],
                      overrides=["rl_train.steps=2", "rl_train.lr=5.0e-4", "evaluate.gate.min_improvement_over_base=101"])
    reports_c = json.loads((_evaluation(c) / "reports.json").read_text())
    refs = [n for n in ("base", "champion") if n in reports_c]
    contenders = [n for n in reports_c if n not in refs]
    assert contenders and all(reports_c[n]["sampled"].startswith("skipped (greedy gate failed: ") for n in contenders)
    assert all(reports_c[n]["pass_at_1_sampled"] is None for n in contenders)
    assert all(reports_c[n]["sampled"] == "measured" for n in refs) and reports_c["base"] == reports_b["base"]
    passes_c = c["stages"]["evaluate"]["passes"]
    assert {n: p["sampled"] for n, p in passes_c.items()} == {**{n: "cached" for n in refs},
                                                              **{n: "skipped" for n in contenders}}
    assert all(p["greedy"] == "cached" for p in passes_c.values())  # the gate is not part of a pass's key
    assert c["stages"]["evaluate"]["decision"].startswith("no candidate passed the gate")


def test_an_rl_segment_whose_payload_vanished_is_recomputed(flow_env):
    import shutil

    from flows.post_training import post_training

    first = post_training(recipe="smoke", stages=["rl_train"])
    last = Path(first["stages"]["rl_train"]["outputs"]["checkpoint"]["uri"])
    shutil.rmtree(last)  # the last segment's payload, gone from the artifact store
    again = post_training(recipe="smoke", stages=["rl_train"])
    assert again["stages"]["rl_train"]["cached"] is False  # its cache record alone is not a hit
    assert again["stages"]["rl_train"]["metrics"]["segments_cached"] == again["stages"]["rl_train"]["metrics"]["segments"] - 1
    assert again["stages"]["rl_train"]["outputs"] == first["stages"]["rl_train"]["outputs"]  # same weights again
    assert (last / "model" / "config.json").exists()
