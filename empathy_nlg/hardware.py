"""What this machine's processor can do, where a speed-up depends on it (one home for the checks).

bf16 is the case that matters: on a CPU with AVX-512 BF16 or AMX, bf16 matrix products run
natively and halve the bytes every layer reads (a serving speed-up for the generator and the
crisis classifier's larger encoder); without them they are emulated — measured ~100× slower than
fp32 on an AVX2-only EPYC — so ``auto`` must keep fp32 there. The project's machines differ from
session to session in exactly this (docs/performance.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def serving_dtype(mode: Optional[str], device: str) -> str:
    """The weights' dtype for inference: ``auto`` → ``bfloat16`` on CUDA and on CPUs with native
    bf16, else ``float32``; ``float32`` / ``bfloat16`` (or ``fp32`` / ``bf16``) as given."""
    mode = (mode or "auto").lower()
    if mode == "auto":
        return "bfloat16" if device.startswith("cuda") or (device == "cpu" and cpu_has_native_bf16()) else "float32"
    if mode in ("float32", "fp32"):
        return "float32"
    if mode in ("bfloat16", "bf16"):
        return "bfloat16"
    raise ValueError(f"dtype must be auto, float32 or bfloat16, got {mode!r}")
