"""Terminal progress: one line per stage start and end; a live bar only on a TTY."""

from __future__ import annotations

import io
import re

from components.progress import TerminalProgress, format_figures
from components.summary import RL_HEADLINE, key_figures, with_aliases


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(tp: TerminalProgress) -> None:
    tp.start("curate")
    tp.end("curate", cached=True, seconds=0.25, figures={"rows_out": 64.0})
    tp.start("rl_train")
    for step in range(1, 5):
        tp.update("rl_train", f"step {step}/4 reward {step / 8:.3f}", step / 4)
    tp.end("rl_train", cached=False, seconds=12.5, figures={"reward_mean": 0.5})


def test_not_a_tty_prints_only_start_and_end_lines():
    out = io.StringIO()
    tp = TerminalProgress(stream=out)
    assert tp.tty is False  # detected from the stream
    _run(tp)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert re.fullmatch(r"\d\d:\d\d:\d\d  curate +started", lines[0])
    assert re.search(r"curate +cached +0\.2s  rows_out=64$", lines[1])
    assert re.search(r"rl_train +started$", lines[2])
    assert re.search(r"rl_train +computed +12\.5s  reward_mean=0\.5$", lines[3])


def test_tty_draws_a_bar_between_the_lines_and_clears_it(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")  # the bar fits the terminal; pytest-xdist workers report 80
    out = _Tty()
    tp = TerminalProgress(stream=out)
    assert tp.tty is True
    _run(tp)
    text = out.getvalue()
    assert "step 4/4 reward 0.500" in text and "100%" in text  # the bar's last state was drawn
    # After carriage-return redraws, the lasting lines are still one per start/end.
    lasting = [seg.split("\r")[-1].strip() for seg in text.split("\n")]
    lasting = [s for s in lasting if s]
    assert [re.sub(r"^\d\d:\d\d:\d\d +", "", s).split()[:2] for s in lasting] == [
        ["curate", "started"], ["curate", "cached"], ["rl_train", "started"], ["rl_train", "computed"]]
    assert not tp._bars  # the bar is closed with its stage


def test_failed_stage_and_figures():
    out = io.StringIO()
    tp = TerminalProgress(stream=out, tty=False)
    tp.end("evaluate", cached=False, seconds=1.0, failed=True)
    assert "evaluate" in out.getvalue() and "FAILED" in out.getvalue()
    assert format_figures({"a": 0.123456, "chosen": "rtn-w8", "n": 3}) == "a=0.123  chosen=rtn-w8  n=3"


def test_key_figures_and_headline_aliases():
    m = {"compressed_size_mb": 0.11, "perplexity": 108.0, "stage_seconds": 3.0}
    assert key_figures("compress:rtn-w8", m) == {"compressed_size_mb": 0.11, "perplexity": 108.0}
    ev = {"base.greedy_pass1": 0.25, "rl.greedy_pass1": 0.5, "rtn-w8.greedy_pass1": 0.5, "promote": 1.0}
    figs = key_figures("evaluate", ev, {"chosen": "rtn-w8"})
    assert figs["chosen"] == "rtn-w8" and figs["rtn-w8.greedy_pass1"] == 0.5
    logged = with_aliases({"reward_mean": 0.25, "loss": 1.0}, RL_HEADLINE)
    assert logged == {"reward_mean": 0.25, "loss": 1.0, "reward/mean": 0.25}
