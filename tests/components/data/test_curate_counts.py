"""End-to-end curation of a hand-made JSONL file with a known number of each defect."""

import json
from pathlib import Path

import pytest

from components.data.config import CurateConfig
from components.data.curate import METRIC_KEYS, CurationError, load_rows, run_curation
from components.data.dedup import jaccard, shingles
from components.data.normalize import prompt_id


def _line(prompt, answer) -> bytes:
    return json.dumps({"prompt": prompt, "answer": answer}).encode() + b"\n"


NEAR_EDITS = {"poetry books there": "poetry tomes there", "steady pace": "steady rate"}


def near_variant(prompt: str) -> str:
    """One 4-5 letter word swapped: in a ~120-char prompt that changes at most 4 + 5 = 9 of ~115
    5-char shingles on each side, so Jaccard >= (115 - 9) / (115 + 9) = 0.855 >= 0.85."""
    for old, new in NEAR_EDITS.items():
        if old in prompt:
            out = prompt.replace(old, new)
            assert jaccard(shingles(prompt, 5), shingles(out, 5)) >= 0.85  # precondition, by definition
            return out
    raise AssertionError(prompt)


def _messy_file(path: Path, t) -> None:
    BASE, ANSWERS, EVAL_LONG, EVAL_SHORT = t.BASE, t.ANSWERS, t.EVAL_LONG, t.EVAL_SHORT
    lines = [_line(p, a) for p, a in zip(BASE, ANSWERS)]  # 10 good rows
    lines += [_line("  " + BASE[0].replace(" ", "   "), "93"), _line(BASE[1] + "\n", "72")]  # 2 exact dups
    lines += [_line(near_variant(BASE[2]), "66"), _line(near_variant(BASE[3]), "72")]  # 2 near dups
    lines += [b'{"prompt": "broken\n', b"not json at all\n", b'{"prompt": "x", "answer": }\n']  # 3 bad JSON
    lines += [json.dumps({"prompt": "A question without an answer field at all"}).encode() + b"\n",
              json.dumps({"answer": "3"}).encode() + b"\n"]  # 2 missing field
    lines += [json.dumps({"prompt": 123, "answer": "1"}).encode() + b"\n",
              json.dumps({"prompt": "Why is the sky blue today?", "answer": ["a"]}).encode() + b"\n",
              b"[1, 2]\n"]  # 3 wrong type
    lines += [b'{"prompt": "Caf\xe9 prices rose by 3 euros", "answer": "3"}\n']  # 1 undecodable (latin-1 byte)
    lines += [_line("Name the colour of a clear daytime sky over the sea", "blue"),
              _line("Which planet is known as the red one in our solar system", "Mars")]  # 2 unverifiable
    lines += [_line("Before the quiz begins, read this carefully. " + EVAL_LONG, "5"),  # 2 contaminated
              _line(EVAL_SHORT, "42")]
    lines += [_line(" ".join(f"word{i}" for i in range(600)), "1")]  # 1 too long (600 > 512 tokens)
    lines += [_line("Hi there", "2")]  # 1 too short (2 < 3 tokens)
    lines += [_line("Combien font deux plus deux en japonais: 二 足す 二", "4")]  # 1 charset (not ascii)
    lines += [b"\n", b"   \n"]  # blank lines are not rows
    path.write_bytes(b"".join(lines))


def _config(tmp_path: Path, t, **over) -> CurateConfig:
    EVAL_LONG, EVAL_SHORT = t.EVAL_LONG, t.EVAL_SHORT
    data = tmp_path / "messy.jsonl"
    _messy_file(data, t)
    evalf = tmp_path / "bench.jsonl"
    evalf.write_text(json.dumps({"question": EVAL_LONG}) + "\n" + json.dumps({"question": EVAL_SHORT}) + "\n")
    cfg = {"sources": [{"type": "jsonl", "name": "messy", "path": str(data)}], "eval_fraction": 0.0,
           "decontam": {"eval_files": [str(evalf)]},
           "filters": {"min_prompt_tokens": 3, "max_prompt_tokens": 512, "charset": "ascii"}}
    cfg.update(over)
    return CurateConfig.model_validate(cfg)


def test_counts_are_exact(tmp_path: Path, numeric_verify, texts) -> None:
    stages = []
    res = run_curation(_config(tmp_path, texts), tmp_path / "out", verify=numeric_verify,
                       progress=lambda s, f: stages.append(s))
    m = res.metrics
    assert set(m) == set(METRIC_KEYS)
    expected = {"rows_in": 30, "rows_out": 10, "exact_duplicates": 2, "near_duplicates": 2, "malformed": 9,
                "unverifiable": 2, "contaminated": 2, "too_long": 1, "too_short": 1, "charset": 1,
                "capped": 0, "eval_rows": 0}
    assert m == {k: float(v) for k, v in expected.items()}
    # every input row is accounted for
    assert m["rows_in"] == m["rows_out"] + m["eval_rows"] + sum(f["removed"] for f in res.filter_counts)
    manifest = json.loads(res.manifest_path.read_text())
    assert manifest["malformed"] == {"bad_json": 3, "missing_field": 2, "undecodable": 1, "wrong_type": 3}
    assert manifest["splits"]["train"]["rows"] == 10 and manifest["digest"] == res.digest
    rows = load_rows(res.train_path)
    # near-dup clusters keep the smaller id; the 10 base prompts remain, answers canonical
    by_id = {r["id"]: r for r in rows}
    for i, p in enumerate(texts.BASE):
        alt = near_variant(p) if i in (2, 3) else None
        kept_id = min(prompt_id(p), prompt_id(alt)) if alt else prompt_id(p)
        assert by_id[kept_id]["answer"] == texts.CANONICAL[i]
    assert all(r["source"] == "messy" and r["task"] == "numeric" and r["meta"] == "{}" for r in rows)
    rejects = [json.loads(x) for x in res.rejects_path.read_text().splitlines()]
    assert {r["reason"] for r in rejects} >= {"bad_json", "missing_field", "wrong_type", "undecodable",
                                             "exact_duplicates", "near_duplicates", "contaminated", "too_long"}
    card = res.card_path.read_text()
    assert "| contaminated | 2 |" in card and "| messy | jsonl |" in card
    assert {"read", "decontam", "filters", "write"} <= set(stages)
    assert load_rows(res.eval_path) == []


def test_without_verify_or_filters_nothing_is_unverifiable(tmp_path: Path, texts) -> None:
    cfg = _config(tmp_path, texts, filters={"charset": "any"})
    m = run_curation(cfg, tmp_path / "out").metrics
    # same file: with no verify callback, default token bounds (1..512) and any charset,
    # the 2 unverifiable, the too-short and the charset rows stay: 10 + 2 + 1 + 1 = 14
    assert (m["rows_out"], m["unverifiable"], m["too_short"], m["charset"], m["too_long"]) == (14, 0, 0, 0, 1)


def test_zero_rows_names_the_filter(tmp_path: Path, numeric_verify, texts) -> None:
    cfg = _config(tmp_path, texts, filters={"max_prompt_tokens": 1})
    with pytest.raises(CurationError, match="too_long"):
        run_curation(cfg, tmp_path / "out", verify=numeric_verify)
    with pytest.raises(CurationError, match="unverifiable"):
        run_curation(_config(tmp_path, texts), tmp_path / "out2", verify=lambda t, a, m: False)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"nope\n{}\n")
    cfg = CurateConfig.model_validate({"sources": [{"type": "jsonl", "name": "junk", "path": str(bad)}]})
    with pytest.raises(CurationError, match="malformed"):
        run_curation(cfg, tmp_path / "out3")


def test_count_tokens_callback_is_used(tmp_path: Path, texts) -> None:
    # whitespace counting keeps 10 rows under 100 tokens; a tokenizer that says 101 for
    # every prompt must remove them all, so the error proves the callback was used
    cfg = _config(tmp_path, texts, filters={"max_prompt_tokens": 100})
    assert run_curation(cfg, tmp_path / "ok").metrics["rows_out"] > 0
    with pytest.raises(CurationError, match="too_long"):
        run_curation(cfg, tmp_path / "out", count_tokens=lambda s: 101)
