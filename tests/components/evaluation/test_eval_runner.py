"""evaluate_candidate on a scripted engine: every figure of the report derived by hand."""

import math

import pytest
from pydantic import ValidationError

from components.evaluation import runner
from components.evaluation.runner import (
    CandidateReport,
    Completion,
    EvalConfig,
    compare_to_champion,
    evaluate_candidate,
)

ROWS = [
    {"id": "a", "prompt": "1+1", "answer": "2"},
    {"id": "b", "prompt": "2+2", "answer": "4"},
    {"id": "c", "prompt": "3+3", "answer": "6"},
]
# Greedy: a right (3 tokens), b wrong (2 tokens), c right (5 tokens).
GREEDY = {"1+1": Completion("2", 3), "2+2": Completion("5", 2), "3+3": Completion("6", 5)}
# Sampled, 4 each: a has 3 right, b has 1 right, c has 0 right.
SAMPLED = {"1+1": ["2", "2", "3", "2"], "2+2": ["4", "1", "1", "1"], "3+3": ["0", "0", "0", "0"]}


def score(row: dict, text: str) -> float:
    return 1.0 if text.strip() == row["answer"] else 0.0


class FakeEngine:
    """Deterministic scripted engine with a fake clock: greedy calls take 1.5 s, sampled ones 10 s."""

    def __init__(self, greedy_drift: bool = False) -> None:
        self.calls: list[tuple[list[str], int, float, int, int]] = []
        self.now = 100.0
        self.greedy_drift = greedy_drift

    def clock(self) -> float:
        return self.now

    def __call__(self, prompts, n, temperature, max_new_tokens, seed):
        self.calls.append((list(prompts), n, temperature, max_new_tokens, seed))
        if temperature == 0.0:
            self.now += 1.5
            greedy_calls = sum(1 for c in self.calls if c[2] == 0.0)
            if self.greedy_drift and greedy_calls == 2:  # second greedy pass changes prompt 0's answer
                return [[Completion(GREEDY[p].text + "!" if i == 0 else GREEDY[p].text, 1)] for i, p in enumerate(prompts)]
            return [[GREEDY[p]] for p in prompts]
        self.now += 10.0
        # Each sample costs len(text) + 1 tokens, i.e. 2 tokens for these one-character answers.
        return [[Completion(t, len(t) + 1) for t in SAMPLED[p][:n]] for p in prompts]


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    eng = FakeEngine()
    monkeypatch.setattr(runner.time, "perf_counter", eng.clock)
    return eng


def test_report_figures_by_hand(engine: FakeEngine) -> None:
    progress: list[tuple[str, int, int]] = []
    cfg = EvalConfig(k=4, temperature=0.7, max_new_tokens=16, seed=5)
    report = evaluate_candidate(
        "cand", engine, ROWS, score, cfg, size_bytes=1234, progress=lambda *a: progress.append(a)
    )
    assert report.name == "cand"
    assert report.n_rows == 3
    assert report.greedy_pass1 == pytest.approx(2 / 3)  # a and c right
    assert report.pass_at_1_sampled == pytest.approx((3 / 4 + 1 / 4 + 0) / 3)  # = 1/3
    assert report.pass_at_k == pytest.approx((1 + 1 + 0) / 3)  # n=k=4: any correct sample
    assert report.k == 4
    assert report.mean_output_tokens == pytest.approx((3 + 2 + 5) / 3)
    assert report.tokens_per_correct == pytest.approx(10 / 2)  # 10 greedy tokens, 2 correct
    assert report.latency_s == pytest.approx(1.5)  # only the first greedy call is timed
    assert report.size_bytes == 1234
    assert report.deterministic is True
    assert report.correct == {"a": True, "b": False, "c": True}
    assert [d.sampled_correct for d in report.details] == [3, 1, 0]
    assert [d.greedy_text for d in report.details] == ["2", "5", "6"]
    assert report.negative_flips is None and report.positive_flips is None
    # Calls: greedy, greedy again for determinism, then the sampled pass, all with the config's seed.
    assert [(c[1], c[2], c[3], c[4]) for c in engine.calls] == [(1, 0.0, 16, 5), (1, 0.0, 16, 5), (4, 0.7, 16, 5)]
    assert engine.calls[0][0] == ["1+1", "2+2", "3+3"]
    assert progress == [("greedy", 1, 3), ("determinism", 2, 3), ("sampled", 3, 3)]


def test_unbiased_pass_at_k_with_more_samples_than_k(engine: FakeEngine) -> None:
    # n_samples=4, k=2. Per prompt pass@2 = 1 - C(4-c,2)/C(4,2):
    # a (c=3): 1 - 0 = 1; b (c=1): 1 - 3/6 = 1/2; c (c=0): 0. Mean = 1.5/3 = 1/2.
    report = evaluate_candidate("cand", engine, ROWS, score, EvalConfig(k=2, n_samples=4))
    assert report.pass_at_k == pytest.approx(0.5)
    assert report.pass_at_1_sampled == pytest.approx(1 / 3)
    assert engine.calls[-1][1] == 4


def test_nondeterministic_engine_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = FakeEngine(greedy_drift=True)
    monkeypatch.setattr(runner.time, "perf_counter", eng.clock)
    report = evaluate_candidate("cand", eng, ROWS, score, EvalConfig())
    assert report.deterministic is False
    assert report.greedy_pass1 == pytest.approx(2 / 3)  # figures come from the first pass


def test_no_determinism_check(engine: FakeEngine) -> None:
    report = evaluate_candidate("cand", engine, ROWS, score, EvalConfig(determinism_check=False))
    assert report.deterministic is None
    assert [c[2] for c in engine.calls] == [0.0, 1.0]


def test_sampled_only(engine: FakeEngine) -> None:
    report = evaluate_candidate("cand", engine, ROWS, score, EvalConfig(greedy=False))
    assert report.greedy_pass1 is None
    assert report.correct == {}
    assert report.latency_s is None
    assert report.deterministic is None
    # 12 sampled completions of 2 tokens each = 24 tokens; 3 + 1 + 0 = 4 correct samples.
    assert report.mean_output_tokens == pytest.approx(2.0)
    assert report.tokens_per_correct == pytest.approx(24 / 4)
    assert len(engine.calls) == 1


def test_max_rows(engine: FakeEngine) -> None:
    report = evaluate_candidate("cand", engine, ROWS, score, EvalConfig(max_rows=2))
    assert report.n_rows == 2
    assert engine.calls[0][0] == ["1+1", "2+2"]
    assert report.correct == {"a": True, "b": False}
    assert report.greedy_pass1 == pytest.approx(1 / 2)


def test_nothing_correct_gives_infinite_cost_and_round_trips(engine: FakeEngine) -> None:
    report = evaluate_candidate("cand", engine, ROWS, lambda row, text: 0.0, EvalConfig())
    assert report.greedy_pass1 == 0.0
    assert report.pass_at_k == 0.0
    assert math.isinf(report.tokens_per_correct)
    again = CandidateReport.model_validate_json(report.model_dump_json())
    assert again == report


def test_engine_misalignment_is_an_error(engine: FakeEngine) -> None:
    def short(prompts, n, temperature, max_new_tokens, seed):
        return [[Completion("2", 1)] * n for _ in prompts[:-1]]

    with pytest.raises(ValueError, match="prompt groups"):
        evaluate_candidate("cand", short, ROWS, score, EvalConfig())

    def few(prompts, n, temperature, max_new_tokens, seed):
        return [[Completion("2", 1)] for _ in prompts]

    with pytest.raises(ValueError, match="completions"):
        evaluate_candidate("cand", few, ROWS, score, EvalConfig(greedy=False))


def test_bad_inputs(engine: FakeEngine) -> None:
    with pytest.raises(ValueError, match="outside"):
        evaluate_candidate("cand", engine, ROWS, lambda row, text: 2.0, EvalConfig())
    with pytest.raises(ValueError, match="unique"):
        evaluate_candidate("cand", engine, ROWS + [ROWS[0]], score, EvalConfig())
    with pytest.raises(ValueError, match="no rows"):
        evaluate_candidate("cand", engine, [], score, EvalConfig())


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="kk"):
        EvalConfig(kk=3)
    with pytest.raises(ValidationError, match="n_samples"):
        EvalConfig(k=4, n_samples=2)
    with pytest.raises(ValidationError):
        EvalConfig(k=0)
    cfg = EvalConfig()
    assert (cfg.k, cfg.temperature, cfg.max_new_tokens, cfg.greedy, cfg.samples) == (4, 1.0, 32, True, 4)


def test_compare_to_champion(engine: FakeEngine) -> None:
    report = evaluate_candidate("cand", engine, ROWS, score, EvalConfig())  # a right, b wrong, c right
    champion = report.model_copy(update={"name": "champ", "correct": {"a": True, "b": True, "c": False}})
    compared = compare_to_champion(report, champion)
    # b: champion right, candidate wrong -> 1 negative; c: the reverse -> 1 positive.
    assert (compared.negative_flips, compared.positive_flips, compared.flip_reference) == (1, 1, "champ")
    assert report.negative_flips is None  # the original is not mutated
    stranger = report.model_copy(update={"name": "other", "correct": {"zz": True}})
    assert compare_to_champion(report, stranger).negative_flips is None


def test_report_from_separate_passes_equals_the_whole_evaluation_and_says_when_sampling_was_skipped(engine):
    cfg = EvalConfig(k=2, n_samples=4)
    whole = evaluate_candidate("m", engine, ROWS, score, cfg, size_bytes=7)
    greedy = runner.greedy_pass(engine, ROWS, score, cfg)
    sampled = runner.sampled_pass(engine, ROWS, score, cfg)
    # Passes survive a JSON round trip (they are cached as JSON) and rebuild the same report.
    greedy = runner.GreedyPass.model_validate_json(greedy.model_dump_json())
    sampled = runner.SampledPass.model_validate_json(sampled.model_dump_json())
    assert runner.build_report("m", ROWS, cfg, greedy, sampled, 7) == whole
    assert sampled.correct == [3, 1, 0]  # SAMPLED above

    skipped = runner.build_report("m", ROWS, cfg, greedy, None, 7, skipped="greedy gate failed: x")
    assert skipped.sampled == "skipped (greedy gate failed: x)"
    assert skipped.pass_at_1_sampled is None and skipped.pass_at_k is None
    assert (skipped.greedy_pass1, skipped.correct) == (whole.greedy_pass1, whole.correct)
    assert all(d.n_samples == 0 and d.sampled_correct == 0 for d in skipped.details)
