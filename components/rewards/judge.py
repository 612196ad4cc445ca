"""LLM-judge reward: a judge model at an OpenAI-compatible URL grades a response against a rubric.

Where the judge is: the settings ``POSTTRAIN_JUDGE_BASE_URL`` (e.g. ``http://127.0.0.1:8000/v1``, a
vLLM server or ``python -m components.serving.hf_server``) and ``POSTTRAIN_JUDGE_API_KEY`` (a
``SecretStr``: sent as the bearer token, never logged, never part of a spec, a cache key or a
record). What it is asked: the reward's config in the recipe (``model``, ``rubric``, ``template``,
``scale_max``), so those enter cache keys through :meth:`RewardFn.spec`.

Verdicts are cached on disk (sqlite, ``<state>/judge_cache.sqlite``) by the digest of (prompt,
response, reference, rubric, template, scale, judge model): the same question is never asked twice,
in this run or the next. A call that fails (server down, per-call timeout, an HTTP error, a verdict
with no readable score, a score out of range under ``out_of_range: fail``) scores 0 with error
``judge_failed``; it is counted (``stats``, and by the RL/eval scorers' error counts), never raised,
and never cached, so a later step asks again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from components.rewards.base import RewardConfig, RewardFn, RewardResult
from components.rewards.parsing import tail
from components.rewards.registry import register

log = logging.getLogger(__name__)

DEFAULT_RUBRIC = (
    "Grade the response for correctness and completeness against the task (and the reference answer "
    "when one is given). Ignore style. A fully correct answer gets the top score; a wrong one gets 0."
)
DEFAULT_TEMPLATE = (
    "Rubric:\n{rubric}\n\nTask:\n{prompt}\n\nReference answer:\n{reference}\n\nResponse to grade:\n"
    "{response}\n\nReply with one line, exactly: Score: N/{scale} (N an integer from 0 to {scale})."
)
SYSTEM = "You are a strict, fair grader."


class JudgeConfig(RewardConfig):
    model: str = Field("judge", description="the judge's served model name")
    rubric: str = Field(DEFAULT_RUBRIC, min_length=1, max_length=8000)
    template: str = Field(DEFAULT_TEMPLATE, description="{rubric} {prompt} {reference} {response} {scale} are filled in")
    scale_max: float = Field(10.0, gt=0, description="the verdict's scale; the reward is score / scale_max")
    out_of_range: Literal["fail", "clamp"] = Field(
        "fail", description="a score outside [0, scale_max]: judge_failed (fail) or clamped into range")
    max_tokens: int = Field(32, ge=1, le=4096, description="verdict length cap")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    timeout_s: float = Field(60.0, gt=0, description="per-call HTTP timeout")
    retries: int = Field(0, ge=0, le=5, description="the openai client's own retries of a failed call")
    max_concurrency: int = Field(4, ge=1, le=256, description="judge calls in flight at once, all threads together")
    max_prompt_chars: int = Field(4096, gt=0, description="the task text is cut to its first N characters")
    cache: bool = Field(True, description="reuse verdicts from the on-disk cache")
    time_limit_s: float = Field(900.0, gt=0, description="measured limit of one call, queueing included (timeout)")


# "Score: 7/10", "**Score**: 7.5", "rating = 4 out of 5", "Grade: 8"; the last one in the text wins.
_SCORE_RE = re.compile(
    r"(?:score|rating|grade)[ \t*\"']{0,4}[:=]?[ \t*]{0,4}(-?\d{1,6}(?:\.\d{1,6})?)"
    r"(?:[ \t]{0,3}(?:/|out[ \t]of)[ \t]{0,3}(\d{1,6}(?:\.\d{1,6})?))?",
    re.IGNORECASE,
)
_JSON_RE = re.compile(r"\{[^{}]{0,2000}\}")
_BARE_RE = re.compile(r"[ \t\n]*(-?\d{1,6}(?:\.\d{1,6})?)(?:[ \t]*/[ \t]*(\d{1,6}(?:\.\d{1,6})?))?[ \t\n.]*")


def _scaled(value: float, denominator: float | None, scale_max: float) -> float | None:
    if denominator is None:
        return value
    return None if denominator <= 0 else value / denominator * scale_max


def _from_json(text: str) -> tuple[float, float | None] | None:
    for m in reversed(list(_JSON_RE.finditer(text))):
        try:
            obj = json.loads(m.group(0))
        except ValueError:
            continue
        if isinstance(obj, dict):
            for k, v in obj.items():
                if str(k).lower() in {"score", "rating", "grade"} and isinstance(v, (int, float)) and not isinstance(v, bool):
                    return float(v), None
    return None


def parse_verdict(text: str, scale_max: float = 10.0) -> float | None:
    """The judge's score on the ``[0, scale_max]`` scale, or None when the text holds none.

    Read in order: a JSON object with a ``score`` (``rating``, ``grade``) number; the last
    ``Score: N`` / ``Score: N/D`` / ``N out of D`` (``N/D`` is rescaled to ``scale_max``); a reply that
    is only a number or ``N/D``. Out-of-range values are returned as they are (the caller decides).
    Linear time: bounded repeats between literals; the text is capped at its last 8000 characters.
    """
    text = tail(str(text), 8000)
    found = _from_json(text)
    if found is None:
        last = None
        for last in _SCORE_RE.finditer(text):  # noqa: B007 - keep the last match
            pass
        m = last or _BARE_RE.fullmatch(text)
        if m is None:
            return None
        found = float(m.group(1)), float(m.group(2)) if m.group(2) else None
    return _scaled(found[0], found[1], scale_max)


class VerdictCache:
    """Judge verdicts by digest in one sqlite file; safe across threads and processes (WAL)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, score REAL, raw TEXT)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def get(self, key: str) -> float | None:
        with self._lock, self._connect() as db:
            row = db.execute("SELECT score FROM verdicts WHERE key = ?", (key,)).fetchone()
        return None if row is None else float(row[0])

    def put(self, key: str, score: float, raw: str) -> None:
        with self._lock, self._connect() as db:
            db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?)", (key, score, raw[:4000]))


def default_cache_path() -> Path:
    from components.settings import get_settings

    return get_settings().state_path / "judge_cache.sqlite"


@register
class JudgeReward(RewardFn):
    """score = the judge's verdict / ``scale_max`` (0..1); ``parts``: ``judge`` (the same), ``cached``.

    The task text comes from ``meta["prompt"]`` (:class:`~components.scoring.RewardScorer` fills it
    from the row, since ``wants_prompt`` is set); the reference answer is ``answer`` (may be empty).
    """

    name = "judge"
    version = "1"
    wants_prompt: ClassVar[bool] = True
    Config = JudgeConfig
    config: JudgeConfig

    def __init__(self, config: RewardConfig | dict | None = None, cache_path: Path | None = None) -> None:
        super().__init__(config)
        self._cache_path = cache_path
        self._cache: VerdictCache | None = None
        self._client: Any = None
        self._configured = False
        self._setup_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.config.max_concurrency)
        self._stats_lock = threading.Lock()
        self.stats = {"requests": 0, "cache_hits": 0, "failures": 0, "in_flight": 0, "peak_in_flight": 0}

    def can_verify(self, answer: str, meta: dict | None = None) -> bool:
        return True  # a judge grades without a reference answer

    def canonical_answer(self, answer: str) -> str | None:
        return str(answer).strip()

    # -- the request ---------------------------------------------------------------------------
    def messages(self, prompt: str, response: str, reference: str) -> list[dict[str, str]]:
        """The chat messages sent to the judge for one response."""
        c = self.config
        scale = int(c.scale_max) if float(c.scale_max).is_integer() else c.scale_max
        user = c.template.format(rubric=c.rubric, prompt=str(prompt)[: c.max_prompt_chars],
                                 reference=reference or "(none)", response=tail(response, c.max_chars), scale=scale)
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]

    def digest(self, prompt: str, response: str, reference: str) -> str:
        c = self.config
        key = {"prompt": str(prompt)[: c.max_prompt_chars], "response": tail(response, c.max_chars),
               "reference": reference, "rubric": c.rubric, "template": c.template, "scale_max": c.scale_max,
               "model": c.model, "judge_version": self.version}
        return hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _setup(self) -> tuple[VerdictCache | None, Any]:
        with self._setup_lock:
            if self._client is None and not self._configured:
                from components.settings import get_settings

                s = get_settings()
                self._configured = True
                if s.judge_base_url:
                    from openai import OpenAI

                    key = s.judge_api_key.get_secret_value() if s.judge_api_key else "none"
                    self._client = OpenAI(base_url=s.judge_base_url, api_key=key,
                                          timeout=self.config.timeout_s, max_retries=self.config.retries)
            if self.config.cache and self._cache is None:
                self._cache = VerdictCache(self._cache_path or default_cache_path())
        return self._cache, self._client

    def _count(self, key: str, delta: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += delta
            self.stats["peak_in_flight"] = max(self.stats["peak_in_flight"], self.stats["in_flight"])

    def _ask(self, client: Any, messages: list[dict[str, str]]) -> str | None:
        """One bounded judge call: the verdict text, or None when the call failed."""
        with self._slots:
            self._count("in_flight")
            try:
                self._count("requests")
                out = client.chat.completions.create(model=self.config.model, messages=messages,
                                                     temperature=self.config.temperature,
                                                     max_tokens=self.config.max_tokens, seed=0)
                return str(out.choices[0].message.content or "")
            except Exception as exc:  # noqa: BLE001 - any client/server failure is a counted failure
                log.warning("judge call failed: %s", type(exc).__name__)  # the message may hold the URL; never the key
                return None
            finally:
                self._count("in_flight", -1)

    def _verdict(self, raw: str | None) -> float | None:
        value = None if raw is None else parse_verdict(raw, self.config.scale_max)
        if value is None:
            return None
        if not 0.0 <= value <= self.config.scale_max:
            if self.config.out_of_range == "fail":
                return None
            value = min(max(value, 0.0), self.config.scale_max)
        return value

    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        prompt = str((meta or {}).get("prompt") or "")
        cache, client = self._setup()
        key = self.digest(prompt, completion, answer)
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            self._count("cache_hits")
            return RewardResult(hit / self.config.scale_max, {"judge": hit / self.config.scale_max, "cached": 1.0})
        if client is None:  # POSTTRAIN_JUDGE_BASE_URL is not set
            self._count("failures")
            return RewardResult(0.0, {"cached": 0.0}, "judge_failed")
        raw = self._ask(client, self.messages(prompt, completion, answer))
        value = self._verdict(raw)
        if value is None:
            self._count("failures")
            return RewardResult(0.0, {"cached": 0.0}, "judge_failed")
        if cache is not None:
            cache.put(key, value, raw or "")
        return RewardResult(value / self.config.scale_max, {"judge": value / self.config.scale_max, "cached": 0.0})

    def score_many(self, items: list[tuple[str, str, dict | None]]) -> list[RewardResult]:
        """Score (completion, answer, meta) items in parallel, ``max_concurrency`` judge calls at a time."""
        with ThreadPoolExecutor(self.config.max_concurrency) as pool:
            return list(pool.map(lambda it: self(*it), items))
