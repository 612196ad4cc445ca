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


# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup
# --no-loadscope-reorder`): each test file is one unit of work (its module fixtures run once), the
# files sharing the session's `posttrain ui` (tests/flows/conftest.py) are one unit, and the longest
# units go first so neither worker is left with a long file at the end. Seconds measured on 2 cores
# (2026-12-02); a file missing here only runs later.
LONGEST_FIRST = [
    "posttrain_ui",  # test_ui_form_browser, test_scheduled_retrain, test_ui_one_server
    "tests/flows/test_kill_resume.py",
    "tests/promises/test_derived_code_versions.py",
    "tests/promises/test_gc_keeps_what_the_registry_needs.py",
    "tests/promises/test_killed_runs_are_marked_crashed.py",
    "tests/promises/test_reproducible_digests.py",
    "tests/promises/test_mistakes_fail_before_work_in_one_line.py",
    "tests/integration/test_s3_cache_two_process.py",
    "tests/flows/test_prefect_deployments.py",
    "tests/promises/test_registering_again_after_a_kill_reuses_the_version.py",
    "tests/flows/test_concurrent_runs.py",
    "tests/flows/test_ui_screenshots.py",
    "tests/flows/test_smoke_flow.py",
    "tests/flows/test_watch_run.py",
]


def _work_unit(item: pytest.Item) -> str:
    return "posttrain_ui" if "posttrain_ui" in getattr(item, "fixturenames", ()) else item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
    units = {id(item): _work_unit(item) for item in items}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(units[id(item)]))
    order = {id(item): (rank.get(units[id(item)], len(rank)), i) for i, item in enumerate(items)}
    items.sort(key=lambda item: order[id(item)])
