"""The README's "Environments and tools" example runs as printed."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_environment_example_runs_verbatim():
    text = README.read_text()
    section = text[text.index("## Environments and tools"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    expected = [line.split("# ", 1)[1] for line in code.splitlines() if line.startswith("print(")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    assert out.getvalue().splitlines() == expected and len(expected) == 2
