"""2:4 and unstructured masks: exactness, tie rules, and parity of reference / torch / Triton paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.sparsity import (
    is_nm_sparse,
    nm_mask,
    nm_mask_reference,
    to_semi_structured,
    unstructured_mask,
    unstructured_mask_reference,
)

ROOT = Path(__file__).resolve().parents[2]


def test_nm_mask_hand_example() -> None:
    # group [1, 4, 3, 2] keeps 4 and 3 (cols 1, 2); group [-5, 0, 5, -1] keeps 5 and 0 (cols 6, 5)
    scores = torch.tensor([[1.0, 4.0, 3.0, 2.0, -5.0, 0.0, 5.0, -1.0]])
    expected = torch.tensor([[False, True, True, False, False, True, True, False]])
    for impl in ("reference", "torch"):
        assert torch.equal(nm_mask(scores, 2, 4, impl=impl), expected)


def test_nm_mask_exactly_two_per_group_with_distinct_scores() -> None:
    torch.manual_seed(0)
    scores = torch.randn(16, 64)  # continuous draws: distinct with probability 1
    mask = nm_mask(scores)
    assert torch.equal(mask.reshape(-1, 4).sum(dim=1), torch.full((16 * 16,), 2))
    # the kept pair of each group holds its two largest scores
    groups, kept = scores.reshape(-1, 4), mask.reshape(-1, 4)
    assert torch.all(groups[kept].reshape(-1, 2).min(dim=1).values > groups[~kept].reshape(-1, 2).max(dim=1).values)
    assert torch.equal(mask, nm_mask_reference(scores))


def test_nm_mask_ties_keep_earlier_columns() -> None:
    scores = torch.ones(3, 8)
    expected = torch.tensor([True, True, False, False] * 2).expand(3, 8)
    assert torch.equal(nm_mask(scores, impl="torch"), expected)
    assert torch.equal(nm_mask_reference(scores), expected)


def test_pruned_weight_is_at_most_two_of_four() -> None:
    torch.manual_seed(1)
    w = torch.randn(8, 32)
    w[0, :4] = 0.0  # an all-zero group stays valid (0 <= 2 non-zeros)
    pruned = w * nm_mask(w.abs())
    assert is_nm_sparse(pruned)
    assert not is_nm_sparse(w)


def test_nm_mask_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="divisible"):
        nm_mask(torch.randn(2, 6))
    with pytest.raises(ValueError, match="2-D"):
        nm_mask(torch.randn(8))


def test_unstructured_per_row_hand_example() -> None:
    # 50% of a row of 4 prunes round(2.0) = 2: the two smallest, 1 and 2
    scores = torch.tensor([[3.0, 1.0, 2.0, 4.0], [0.5, 0.25, 1.0, 2.0]])
    expected = torch.tensor([[True, False, False, True], [False, False, True, True]])
    assert torch.equal(unstructured_mask(scores, 0.5), expected)
    assert torch.equal(unstructured_mask_reference(scores, 0.5), expected)


def test_unstructured_sparsity_is_exact() -> None:
    torch.manual_seed(2)
    scores = torch.rand(8, 64)
    per_row = unstructured_mask(scores, 0.5)
    assert torch.equal((~per_row).sum(dim=1), torch.full((8,), 32))  # 0.5 * 64 per row
    whole = unstructured_mask(scores, 0.25, per_row=False)
    assert int((~whole).sum()) == 128  # 0.25 * 512 over the matrix
    assert scores[whole].min() > scores[~whole].max()
    assert torch.equal(whole, unstructured_mask_reference(scores, 0.25, per_row=False))
    # 30% of 64 = 19.2 -> 19 per row
    assert torch.equal((~unstructured_mask(scores, 0.3)).sum(dim=1), torch.full((8,), 19))


def test_unstructured_ties_prune_later_columns() -> None:
    scores = torch.ones(1, 4)
    assert torch.equal(unstructured_mask(scores, 0.5), torch.tensor([[True, True, False, False]]))
    assert torch.equal(unstructured_mask_reference(scores, 0.5), torch.tensor([[True, True, False, False]]))


def test_semi_structured_refuses_cpu() -> None:
    w = torch.randn(32, 64)
    with pytest.raises(ValueError, match="CUDA"):
        to_semi_structured(w * nm_mask(w.abs()))


def _python(code: str, **env: str) -> str:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_triton_kernel_matches_reference_in_interpreter() -> None:
    # TRITON_INTERPRET must be set before triton is imported, hence a fresh interpreter
    code = (
        "import torch\n"
        "from kernels.sparsity import nm_mask, nm_mask_reference, HAS_TRITON\n"
        "assert HAS_TRITON\n"
        "torch.manual_seed(0)\n"
        "s = torch.randn(24, 40); s[:, :8] = 1.0  # include ties\n"
        "assert torch.equal(nm_mask(s, impl='triton'), nm_mask_reference(s))\n"
        "assert torch.equal(nm_mask(s), nm_mask(s, impl='triton'))  # auto picks triton under the interpreter\n"
        "print('ok')\n"
    )
    assert _python(code, TRITON_INTERPRET="1") == "ok"


def test_imports_and_runs_without_triton() -> None:
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from kernels.sparsity import nm_mask, HAS_TRITON\n"
        "assert not HAS_TRITON\n"
        "print(nm_mask(torch.tensor([[1.0, 4.0, 3.0, 2.0]])).int().tolist())\n"
    )
    assert _python(code) == "[[0, 1, 1, 0]]"
