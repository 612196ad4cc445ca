"""The promotion gate on a table of hand-built reports."""

import pytest
from pydantic import ValidationError

from components.evaluation.gate import GateConfig, decide
from components.evaluation.runner import CandidateReport


def rep(
    name: str,
    acc: float,
    size: int | None = 100,
    det: bool | None = True,
    correct: dict[str, bool] | None = None,
) -> CandidateReport:
    """A report whose figures are set directly; when `correct` is given, acc is its mean."""
    if correct is not None:
        acc = sum(correct.values()) / len(correct)
    return CandidateReport(
        name=name,
        greedy_pass1=acc,
        pass_at_1_sampled=acc,
        pass_at_k=acc,
        k=4,
        mean_output_tokens=10.0,
        tokens_per_correct=10.0,
        latency_s=1.0,
        size_bytes=size,
        deterministic=det,
        correct=correct if correct is not None else {"p0": True},
        n_rows=len(correct) if correct is not None else 1,
    )


CHAMP_CORRECT = {"1": True, "2": True, "3": False, "4": False}

CASES = [
    # id, candidates, champion, base, config, expected chosen, expected passed
    ("none_passes", [rep("a", 0.40), rep("b", 0.45)], rep("champ", 0.5), None, {}, None, []),
    ("tolerance_edge_passes", [rep("a", 0.48)], rep("champ", 0.5), None, {"tolerance": 2.0}, "a", ["a"]),
    ("tolerance_edge_fails", [rep("a", 0.47)], rep("champ", 0.5), None, {"tolerance": 2.0}, None, []),
    ("equal_to_champion_passes", [rep("a", 0.5)], rep("champ", 0.5), None, {}, "a", ["a"]),
    ("size_budget", [rep("a", 0.7, 200), rep("b", 0.6, 100)], rep("champ", 0.5), None, {"max_size_bytes": 150}, "b", ["b"]),
    ("size_budget_edge", [rep("a", 0.7, 150)], None, None, {"max_size_bytes": 150}, "a", ["a"]),
    ("size_unknown_fails_budget", [rep("a", 0.7, None)], None, None, {"max_size_bytes": 150}, None, []),
    ("determinism_required", [rep("a", 0.8, det=False), rep("b", 0.6), rep("c", 0.9, det=None)], rep("champ", 0.5), None, {}, "b", ["b"]),
    ("determinism_not_required", [rep("a", 0.8, det=False), rep("b", 0.6)], rep("champ", 0.5), None, {"require_determinism": False}, "a", ["a", "b"]),
    # a: champion's 1 and 2 now wrong, 3 and 4 right -> 2 negative flips; b: only 2 lost -> 1.
    # Both have accuracy 0.5 like the champion.
    ("negative_flip_limit",
     [rep("a", 0, correct={"1": False, "2": False, "3": True, "4": True}),
      rep("b", 0, correct={"1": True, "2": False, "3": True, "4": False})],
     rep("champ", 0, correct=CHAMP_CORRECT), None, {"max_negative_flips": 1}, "b", ["b"]),
    ("negative_flip_limit_zero",
     [rep("b", 0, correct={"1": True, "2": False, "3": True, "4": False})],
     rep("champ", 0, correct=CHAMP_CORRECT), None, {"max_negative_flips": 0}, None, []),
    ("flips_without_shared_ids_fail", [rep("a", 0.9)], rep("champ", 0, correct=CHAMP_CORRECT), None, {"max_negative_flips": 5}, None, []),
    ("tie_smaller_size_wins", [rep("a", 0.6, 200), rep("b", 0.6, 100)], rep("champ", 0.5), None, {}, "b", ["a", "b"]),
    ("tie_same_size_name_wins", [rep("z", 0.6, 100), rep("m", 0.6, 100)], rep("champ", 0.5), None, {}, "m", ["z", "m"]),
    ("tie_unknown_size_loses", [rep("a", 0.6, None), rep("b", 0.6, 300)], None, None, {}, "b", ["a", "b"]),
    ("no_champion_compares_to_base_fail", [rep("a", 0.4)], None, rep("base", 0.5), {}, None, []),
    ("no_champion_compares_to_base_pass", [rep("a", 0.55)], None, rep("base", 0.5), {}, "a", ["a"]),
    ("champion_preferred_over_base", [rep("a", 0.55)], rep("champ", 0.6), rep("base", 0.5), {}, None, []),
    ("no_reference_best_wins", [rep("a", 0.3), rep("b", 0.35)], None, None, {}, "b", ["a", "b"]),
    # 5 points over base 0.5 -> needs 0.55.
    ("min_improvement_edge", [rep("a", 0.55), rep("b", 0.54)], None, rep("base", 0.5), {"min_improvement_over_base": 5.0}, "a", ["a"]),
    ("min_improvement_without_base_fails", [rep("a", 0.9)], rep("champ", 0.5), None, {"min_improvement_over_base": 5.0}, None, []),
    ("metric_choice", [rep("a", 0.6)], rep("champ", 0.5).model_copy(update={"pass_at_k": 0.9}), None, {"metric": "pass_at_k"}, None, []),
    ("no_candidates", [], rep("champ", 0.5), None, {}, None, []),
]


@pytest.mark.parametrize(("candidates", "champion", "base", "cfg", "chosen", "passed"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gate_table(candidates, champion, base, cfg, chosen, passed) -> None:
    decision = decide(candidates, champion, base, GateConfig(**cfg))
    assert decision.chosen == chosen
    assert decision.passed == passed
    assert set(decision.reasons) == {c.name for c in candidates}
    for name, reasons in decision.reasons.items():
        assert reasons, f"{name} has no reasons"
        assert any(r.startswith("fail:") for r in reasons) == (name not in passed)


def test_none_passes_summary_says_why() -> None:
    decision = decide([rep("a", 0.4, 500)], rep("champ", 0.5), None, GateConfig(max_size_bytes=100))
    assert decision.chosen is None
    assert decision.summary.startswith("no candidate passed")
    assert "greedy_pass1 40.00% < champion 50.00%" in decision.summary
    assert "size 500 B > budget 100 B" in decision.summary


def test_chosen_summary_and_frontier() -> None:
    # b dominates c and d (more accurate and smaller); a is the most accurate, so it stays on the
    # frontier even though it is over the size budget and cannot be chosen.
    mb = 1_000_000
    cands = [rep("a", 0.9, 300 * mb), rep("b", 0.7, 200 * mb), rep("c", 0.65, 250 * mb), rep("d", 0.5, 240 * mb)]
    decision = decide(cands, rep("champ", 0.5), None, GateConfig(max_size_bytes=250 * mb))
    assert decision.frontier == ["b", "a"]
    assert decision.chosen == "b"
    assert decision.passed == ["b", "c", "d"]  # d equals the champion, allowed with tolerance 0
    assert decision.summary == "chose b: greedy_pass1 70.00%, 200.00 MB vs champion champ 50.00%; 3 of 4 candidates passed"


def test_duplicate_candidate_names_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        decide([rep("a", 0.5), rep("a", 0.6)], None, None, GateConfig())


def test_gate_config_validation() -> None:
    with pytest.raises(ValidationError, match="tolerence"):
        GateConfig(tolerence=1.0)
    with pytest.raises(ValidationError, match="greedy_pass1"):  # the error lists the allowed metrics
        GateConfig(metric="accuracy")
    with pytest.raises(ValidationError):
        GateConfig(tolerance=-1.0)


def test_summary_names_the_reference_once_when_it_is_called_base() -> None:
    decision = decide([rep("rl", 0.5)], None, rep("base", 0.25), GateConfig())
    assert " vs base 25.00%" in decision.summary and "vs base base" not in decision.summary


def test_greedy_gate_failures_are_the_checks_sampling_cannot_change():
    from components.evaluation.gate import greedy_gate_failures

    champ, base = rep("champ", 0.5, correct=CHAMP_CORRECT), rep("base", 0.25)
    worse = rep("w", 0.0, correct={k: False for k in CHAMP_CORRECT})
    greedy_only = worse.model_copy(update={"pass_at_1_sampled": None, "pass_at_k": None})
    assert greedy_gate_failures(greedy_only, champ, base, GateConfig()) == ["greedy_pass1 0.00% < champion 50.00% - 0.0 pt"]
    # Gated on a sampled metric, the greedy figures decide only flips, determinism and size.
    sampled_gate = GateConfig(metric="pass_at_1_sampled", min_improvement_over_base=50.0)
    assert greedy_gate_failures(greedy_only, champ, base, sampled_gate) == []
    flaky = greedy_only.model_copy(update={"deterministic": False})
    assert greedy_gate_failures(flaky, champ, base, sampled_gate) == ["two greedy passes gave different outputs"]
    flips = GateConfig(metric="pass_at_1_sampled", max_negative_flips=1)
    assert greedy_gate_failures(greedy_only, champ, base, flips) == ["2 negative flips vs champion > 1"]
    # Every failure found on the greedy pass alone is also a failure of the full gate.
    full = decide([worse], champ, base, GateConfig())
    assert full.passed == [] and f"fail: {greedy_gate_failures(greedy_only, champ, base, GateConfig())[0]}" in full.reasons["w"]
