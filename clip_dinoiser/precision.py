"""Which compute precision a device gets: ``precision=auto`` resolved once per device.

``auto`` is the paper's fp32 everywhere except on a CPU with native bf16 matrix instructions
(Intel AMX or AVX512-BF16), where bf16 autocast runs the matrix products at several times the
fp32 rate. A CPU without them (AVX2, AVX-512 without BF16) runs bf16 products in reference kernels
(8-70x slower than fp32 on the AVX2 development machine, BENCHMARKS.md): ``auto`` gives fp32
there. The fidelity of bf16 against fp32 is measured by ``tools/benchmark.py cpu``.
"""

from __future__ import annotations

import torch

AUTO = "auto"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions: AMX tiles or AVX512-BF16 dot products."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check() for check in checks if check is not None)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``precision`` as run on ``device``: ``auto`` -> ``bf16`` on a CPU with native bf16, else
    ``fp32`` (on CUDA too: the paper's numbers); any other value is returned as it is."""
    if precision != AUTO:
        return precision
    return "bf16" if torch.device(device).type == "cpu" and cpu_has_native_bf16() else "fp32"
