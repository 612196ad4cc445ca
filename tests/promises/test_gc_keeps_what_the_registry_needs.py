"""Promise: ``posttrain gc`` frees space without losing anything that matters. A dry run (the
default) lists what would go with its size and deletes nothing; ``--yes`` deletes payloads no
registered version, live deployment or recent run needs, and the optimiser state of intermediate
RL segments; the champion's recipe then reruns as cache hits for every stage. Each run's summary
says how many bytes it wrote."""

from __future__ import annotations

import json
import re

from user_cli import posttrain

from components.gc import size_of

CHAMPION = ["run", "--recipe", "smoke"]
OTHER = ["run", "--recipe", "smoke", "--set", "rl_train.lr=2.0e-3", "--stages", "compress"]
GC = ["gc", "--keep-last", "0", "--older-than", "0"]


def _run(args, state, summary):
    r = posttrain([*args, "--summary", str(summary)], state)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(summary.read_text())


def test_gc_keeps_what_the_registry_needs(tmp_path):
    state = tmp_path / "state"
    arts = state / "artifacts"
    champ = _run(CHAMPION, state, tmp_path / "a.json")
    assert champ["bytes_written"] == sum(size_of(arts / p) for p in champ["payloads"])
    other = _run(OTHER, state, tmp_path / "b.json")
    only_other = sorted(set(other["payloads"]) - set(champ["payloads"]))
    assert only_other and all(p.startswith(("rl_train/", "compress/")) for p in only_other)
    assert other["bytes_written"] == sum(size_of(arts / p) for p in only_other)
    intermediate = [arts / p / "trainer_state.pt" for p in champ["rl_segments"][:-1]]
    assert intermediate and all(p.exists() for p in intermediate)

    before = size_of(arts)
    expected = sum(size_of(arts / p) for p in only_other) + sum(size_of(p) for p in intermediate)
    dry = posttrain(GC, state, timeout=600)
    assert dry.returncode == 0, dry.stderr[-3000:]
    listed = set(re.findall(r"would delete .*?  (\S+)  \(", dry.stdout))
    assert listed == {str(arts / p) for p in only_other} | {str(p) for p in intermediate}, dry.stdout
    assert size_of(arts) == before  # a dry run deletes nothing

    done = posttrain([*GC, "--yes"], state, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not any((arts / p).exists() for p in only_other) and not any(p.exists() for p in intermediate)
    assert all((arts / p / "_ref.json").exists() for p in champ["payloads"])
    assert before - size_of(arts) == expected > 0
    assert f"in {len(listed)} item(s)" in done.stdout

    again = _run(CHAMPION, state, tmp_path / "c.json")
    assert all(s["cached"] for s in again["stages"].values()), {k: s["cached"] for k, s in again["stages"].items()}
    assert again["stages"]["rl_train"]["metrics"]["segments_cached"] == again["stages"]["rl_train"]["metrics"]["segments"]
    assert again["bytes_written"] == 0
    assert again["stages"]["deploy"]["deployment"]["version"] == champ["stages"]["deploy"]["deployment"]["version"]
