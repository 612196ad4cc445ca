"""Shared fixtures: a tiny random Llama checkpoint built locally (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (set before torch loads; see README, Settings).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from components.models import build_tiny_model

    d = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(d, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64, seed=0)
    return d



# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadfile
# --no-loadscope-reorder`): each test file is one unit of work (its module fixtures run once, in one
# worker) and the longest files go first, so neither worker is left with a long file at the end.
# (`--dist loadgroup` cannot group here: xdist 3.8 marks groups in `item._nodeid`, which pytest 9
# no longer reads.) Seconds measured on 2 cores, 2026-12-01; a file missing here only runs later.
LONGEST_FIRST = [
    # 213 at load 3.0-4.4, 269 at load 4.6-7.7 alone (2026-12-02, with the serve-flows deployment run,
    # ~90-105 of it; 180-278 before it was added); 691 once at load 6-11 inside `make test`
    "tests/flows/test_ray_executor.py",
    "tests/components/test_rl_distributed.py",  # 240 (measured alone beside other helpers, with fsdp2)
    "tests/flows/test_kill_resume.py",  # 182
    # The browser form timed out after Submit when it ran beside the two-node Ray test (fresh clone,
    # 2026-12-02; it passes alone in ~200 s): it starts after the Ray test's worker is free.
    "tests/flows/test_ui_form_browser.py",  # 267
    "tests/promises/test_tool_recipe_masks_tool_tokens_and_logs_transcripts.py",  # 175 (beside helpers)
    "tests/promises/test_derived_code_versions.py",  # 168
    "tests/promises/test_gc_keeps_what_the_registry_needs.py",  # 149
    "tests/flows/test_scheduled_retrain.py",  # 133
    "tests/promises/test_killed_runs_are_marked_crashed.py",  # 128
    "tests/promises/test_reproducible_digests.py",  # 127
    "tests/promises/test_mistakes_fail_before_work_in_one_line.py",  # 114
    "tests/integration/test_s3_cache_two_process.py",  # 111
    "tests/flows/test_prefect_deployments.py",  # 108
    "tests/components/test_judge_reward.py",  # 96 (trains a tiny judge, starts hf_server)
    "tests/promises/test_registering_again_after_a_kill_reuses_the_version.py",  # 101
    "tests/flows/test_concurrent_runs.py",  # 97
    "tests/flows/test_ui_one_server.py",  # 90
    "tests/flows/test_ui_screenshots.py",  # 83
    "tests/flows/test_smoke_flow.py",  # 80
    "tests/flows/test_watch_run.py",  # 61
]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    order = {id(item): (rank.get(item.nodeid.split("::")[0], len(rank)), i) for i, item in enumerate(items)}
    items.sort(key=lambda item: order[id(item)])
