"""The `judge` reward against a real hf_server process (a tiny model), with the on-disk verdict cache.

A tiny random judge emits garbage, so the module first trains the tiny model for a few dozen steps
to answer the judge requests of these tests with ``Score: 7/10`` (a real model, served for real;
the expected reward 0.7 is read from that trained string by the parser). A garbage verdict is the
same server cut at ``max_tokens: 3`` ("Sco"), which holds no score.
"""

from __future__ import annotations

import json
import shutil
import threading

import httpx
import openai
import pytest

from components.rewards import JudgeReward, get_reward
from components.rewards.judge import parse_verdict
from components.scoring import RewardScorer
from components.serving.hf_server import HFServerProcess
from components.serving.vllm_server import find_free_port
from components.settings import reset_settings

VERDICT = "Score: 7/10"
SECRET = "sk-posttrain-judge-secret-4711"
ITEMS = [  # (task prompt, response, reference) the tiny judge is trained on
    ("What is 2+2?", "4", "4"),
    ("What is 3+3?", "7", "6"),
    ("Name a primary colour.", "blue", ""),
    ("Solve x+1=3.", "x = 2", "2"),
]


def _train_judge(src, dst) -> None:
    """Fine-tune the tiny model until greedy decoding answers each ITEMS request with VERDICT."""
    import torch

    from components.models import load_model, load_tokenizer

    shutil.copytree(src, dst)
    model, tok = load_model(dst), load_tokenizer(dst)
    judge = JudgeReward()
    target = tok(VERDICT + tok.eos_token, add_special_tokens=False)["input_ids"]
    seqs = []
    for prompt, response, ref in ITEMS:
        ids = tok.apply_chat_template(judge.messages(prompt, response, ref), add_generation_prompt=True, tokenize=True)
        seqs.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        loss = sum(model(input_ids=torch.tensor([p + target]), labels=torch.tensor([[-100] * len(p) + target])).loss
                   for p in seqs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01 * len(seqs):
            break
    model.save_pretrained(dst)


@pytest.fixture(scope="module")
def judge_server(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("judge")
    _train_judge(tiny_model_dir, root / "judge-model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POSTTRAIN_STATE_DIR", str(root / "state"))
        mp.setenv("POSTTRAIN_JUDGE_API_KEY", SECRET)
        with HFServerProcess(root / "judge-model", root / "server.log", name="judge") as srv:
            mp.setenv("POSTTRAIN_JUDGE_BASE_URL", srv.base_url)
            reset_settings()
            yield srv
        reset_settings()
    log = srv.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert SECRET not in log


def _served(srv) -> int:
    return httpx.get(f"http://127.0.0.1:{srv.port}/metrics").json()["chat_completions"]


def test_parser_reads_the_usual_verdict_shapes():
    cases = {  # text -> (numerator, denominator or None): expected = numerator / denominator * 10
        "Score: 7/10": (7, 10), "**Score:** 8": (8, None), "rating = 4 out of 5": (4, 5),
        '{"score": 6, "reason": "ok"}': (6, None), "Reasoning... Score: 2/10. On reflection, Score: 9/10": (9, 10),
        "  3  ": (3, None), "7/10": (7, 10), "Score: 12": (12, None),
    }
    for text, (num, den) in cases.items():
        assert parse_verdict(text, 10.0) == pytest.approx(num / den * 10 if den else num), text
    for garbage in ("", "Sco", "no idea", "\n\n\n", "Score: /10", '{"verdict": "good"}', "Score: 7/0"):
        assert parse_verdict(garbage, 10.0) is None, garbage


def test_out_of_range_fails_or_clamps():
    assert JudgeReward()._verdict("Score: 12") is None  # default: out of range is a failure
    assert JudgeReward({"out_of_range": "clamp"})._verdict("Score: 12") == 10.0
    assert JudgeReward({"out_of_range": "clamp"})._verdict("Score: -3") == 0.0


def test_scores_through_the_scorer_then_hits_the_cache(judge_server, caplog):
    prompt, response, ref = ITEMS[0]
    spec = json.dumps({"name": "judge", "model": "judge", "rubric": JudgeReward.Config().rubric})
    row = {"prompt": prompt, "answer": ref, "task": spec, "meta": "{}"}
    expected = parse_verdict(VERDICT) / 10.0
    scorer = RewardScorer()
    before = _served(judge_server)
    assert scorer(row, response) == pytest.approx(expected) and scorer.errors == {}
    assert _served(judge_server) == before + 1
    assert scorer(row, response) == pytest.approx(expected)  # same question: answered from the cache
    assert _served(judge_server) == before + 1
    fresh = get_reward(spec)  # a new instance (a later run) reads the same on-disk cache
    res = fresh(response, ref, {"prompt": prompt})
    assert res.parts["cached"] == 1.0 and res.score == pytest.approx(expected)
    assert (fresh.stats["cache_hits"], fresh.stats["requests"]) == (1, 0)
    assert _served(judge_server) == before + 1
    assert (judge_server.log_path.parent / "state" / "judge_cache.sqlite").exists()
    assert SECRET not in caplog.text and SECRET not in json.dumps(fresh.spec())


def test_garbage_verdict_is_a_counted_failure(judge_server):
    prompt, response, ref = ITEMS[1]
    judge = JudgeReward({"max_tokens": 3})
    raw = openai.OpenAI(base_url=judge_server.base_url, api_key="x").chat.completions.create(
        model="judge", messages=judge.messages(prompt, response, ref), temperature=0, max_tokens=3, seed=0)
    assert parse_verdict(raw.choices[0].message.content or "") is None  # what the reward gets holds no score
    res = judge(response, ref, {"prompt": prompt})
    assert (res.score, res.error) == (0.0, "judge_failed")
    assert judge.stats["failures"] == 1
    assert judge(response, ref, {"prompt": prompt}).error == "judge_failed"  # failures are not cached
    assert judge.stats["requests"] == 2


def test_a_down_server_is_a_counted_failure(judge_server, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_JUDGE_BASE_URL", f"http://127.0.0.1:{find_free_port()}/v1")
    reset_settings()
    try:
        scorer = RewardScorer()
        row = {"prompt": "p", "answer": "", "task": '{"name": "judge", "cache": false, "timeout_s": 5}'}
        assert scorer(row, "anything") == 0.0
        assert scorer.errors == {"judge_failed": 1}
    finally:
        monkeypatch.setenv("POSTTRAIN_JUDGE_BASE_URL", judge_server.base_url)
        reset_settings()


def test_concurrency_is_bounded_across_threads(judge_server):
    judge = JudgeReward({"cache": False, "max_concurrency": 2})
    items = [(resp, ref, {"prompt": p}) for p, resp, ref in ITEMS] * 2
    before = _served(judge_server)
    results = judge.score_many(items)
    assert [r.score for r in results] == [pytest.approx(parse_verdict(VERDICT) / 10.0)] * len(items)
    assert judge.stats["requests"] == len(items) == _served(judge_server) - before
    assert judge.stats["peak_in_flight"] == 2
    # Plain threads share the same bound.
    threads = [threading.Thread(target=judge, args=items[i]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert judge.stats["peak_in_flight"] == 2 and judge.stats["in_flight"] == 0
