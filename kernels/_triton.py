"""Optional Triton import shared by the kernels: triton is only present on some installs,
and every kernel module must import (and run its torch paths) without it."""

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None
    HAS_TRITON = False
