"""Normalisation, canonical answers, ids, and config validation."""

import hashlib

import pytest
from pydantic import ValidationError

from components.data.config import CurateConfig
from components.data.normalize import canonical_answer, normalize_text, prompt_id, word_tokens


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("\\boxed{1,234}", "1234"),  # box and thousands separator removed
        ("$12.0$", "12"),  # dollars and trailing .0
        ("  7 ", "7"),
        ("1,234,567.5", "1234567.5"),
        ("3.50", "3.50"),  # only an all-zero fraction is dropped
        ("12.00", "12"),
        ("-4.0", "-4"),
        ("+5", "5"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces kept inside the box
        ("\uff11\uff12", "12"),  # full-width digits fold under NFKC
        ("Paris", "Paris"),
        ("12,34", "12,34"),  # not a thousands pattern: left alone
    ],
)
def test_canonical_answer(raw: str, expected: str) -> None:
    assert canonical_answer(raw) == expected


def test_normalize_and_id() -> None:
    assert normalize_text("  What\u00a0is \n\t 2 + 2? ") == "What is 2 + 2?"
    # id = first 16 hex of sha256 of the normalised prompt, so whitespace variants share it
    expected = hashlib.sha256(b"What is 2 + 2?").hexdigest()[:16]
    assert prompt_id("What  is 2 +  2?") == expected
    assert word_tokens("What is 23+19?") == ["what", "is", "23", "+", "19", "?"]


def test_config_rejects_unknown_field_and_type() -> None:
    with pytest.raises(ValidationError, match="colour"):
        CurateConfig.model_validate({"sources": [{"type": "arithmetic", "name": "a", "n": 3}], "colour": 1})
    with pytest.raises(ValidationError, match="arithmetic"):  # the error lists the allowed types
        CurateConfig.model_validate({"sources": [{"type": "xml", "name": "a", "path": "x"}]})
    with pytest.raises(ValidationError, match="unique"):
        CurateConfig.model_validate({"sources": [{"type": "arithmetic", "name": "a", "n": 1}] * 2})
    with pytest.raises(ValidationError, match="digits"):
        CurateConfig.model_validate({"sources": [{"type": "arithmetic", "name": "a", "n": 1, "digits": [3, 2]}]})


def test_config_defaults() -> None:
    cfg = CurateConfig.model_validate({"sources": [{"type": "jsonl", "name": "j", "path": "/x.jsonl"}]})
    assert cfg.eval_fraction == 0.1 and cfg.dedup.threshold == 0.7 and cfg.dedup.shingle == 5
    assert cfg.decontam.ngram == 13 and cfg.filters.max_prompt_tokens == 512 and cfg.filters.charset == "any"
    assert cfg.sources[0].fields.prompt == "prompt" and cfg.refresh is False
