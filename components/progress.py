"""What a run shows in the terminal: one line per stage as it starts and ends, and a live bar.

On a terminal (a TTY) the running stage gets a tqdm bar with its latest message (RL step and
reward, difficulty round, compression layer, evaluation candidate) that redraws as the stage
reports. When the output is not a TTY (a log file, CI, a Prefect worker) there are no bars and
no redraws: only the start and end lines, so a log stays readable.

Pure Python (no Prefect, no MLflow): the task layer feeds it from a stage's progress callback.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import IO, Any

from tqdm import tqdm

_BAR_FORMAT = "  {desc} {bar:24} {percentage:3.0f}% {elapsed}{postfix}"


def format_figures(figures: dict[str, Any] | None) -> str:
    """``k=v`` pairs, numbers with 3 significant digits; strings as they are."""
    parts = []
    for k, v in (figures or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            parts.append(f"{k}={v}")
        else:
            parts.append(f"{k}={v:.3g}")
    return "  ".join(parts)


class TerminalProgress:
    """Stage lines and (on a TTY) one live bar per running stage.

    ``stream`` defaults to the process's stdout at call time; ``tty`` defaults to whether that
    stream is a terminal.
    """

    def __init__(self, stream: IO[str] | None = None, tty: bool | None = None):
        self._stream = stream
        self._tty = tty
        self._bars: dict[str, tqdm] = {}
        self._lock = threading.Lock()

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    @property
    def tty(self) -> bool:
        if self._tty is not None:
            return self._tty
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def line(self, text: str) -> None:
        """A plain line; on a TTY it is printed above the live bars."""
        with self._lock:
            stamped = f"{time.strftime('%H:%M:%S')}  {text}"
            if self._bars:
                tqdm.write(stamped, file=self.stream)
            else:
                self.stream.write(stamped + "\n")
            self.stream.flush()

    def start(self, label: str, detail: str = "") -> None:
        self.line(f"{label:26s} started" + (f"  {detail}" if detail else ""))

    def update(self, label: str, message: str, frac: float) -> None:
        """Move the stage's bar to ``frac`` (0..1) with ``message``; nothing when not a TTY."""
        if not self.tty:
            return
        pct = max(0.0, min(100.0, 100.0 * float(frac)))
        with self._lock:
            bar = self._bars.get(label)
            if bar is None:
                # disable=False: the process sets TQDM_DISABLE=1 to silence libraries' own bars.
                size = shutil.get_terminal_size((100, 20))  # a pty without a size reports 0 x 0
                bar = tqdm(total=100, desc=f"{label:24s}", file=self.stream, bar_format=_BAR_FORMAT,
                           leave=False, ncols=min(120, size.columns), nrows=size.lines,
                           mininterval=0.2, disable=False)
                self._bars[label] = bar
            bar.n = pct
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

    def end(self, label: str, cached: bool, seconds: float, figures: dict[str, Any] | None = None,
            failed: bool = False) -> None:
        with self._lock:
            bar = self._bars.pop(label, None)
            if bar is not None:
                bar.close()
        how = "FAILED" if failed else ("cached" if cached else "computed")
        figs = format_figures(figures)
        self.line(f"{label:26s} {how:8s} {seconds:7.1f}s" + (f"  {figs}" if figs else ""))


_terminal = TerminalProgress()


def terminal() -> TerminalProgress:
    """The process's terminal reporter (stdout)."""
    return _terminal
