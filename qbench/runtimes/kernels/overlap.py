"""Programmatic dependent launch (PDL, Hopper and later): each of lean's own kernels starts while the
one before it is still finishing, reads what does not depend on it, and waits for it only then.

Why: at batch 1 on the H100 a decode step is about 280 kernels in a row, many of them short (a 4-bit
o_proj takes about three times its reading at the copy rate: results/h100/int4/README.md). Between
two dependent kernels the GPU drains the first, then launches the second, whose first loads then wait
a full memory latency; that ramp recurs in every kernel. With PDL (a launch attribute,
`launch_pdl=True` in Triton) the second kernel's programs may be scheduled once every program of the
first has said so (`griddepcontrol.launch_dependents`); each then asks L2 for the constant data it
reads first (its first weight tiles, or the whole weight where it takes at most half the L2: `whole`;
the cache positions written by earlier steps) and blocks in `griddepcontrol.wait` until the first
kernel has completed and its writes are visible. Everything
that depends on the kernel before (its output, a workspace it may still use) is read or written only
after the wait.

The rule every kernel launched with PDL keeps, so that the overlap never reaches further than one
kernel back: every program calls `after_previous()` (the wait) before it reads anything the step
writes and before it writes anything. Then a kernel's completion implies its predecessor's, and a
kernel launched without the attribute (inductor's, cuBLAS, gemlite's) waits for the whole chain as
usual. Reading constant data before the wait is what the prefetch does; nothing else is.

Off unless QBENCH_LEAN_PDL=on (a measure variable: the cell key holds it) until a measurement says
it helps; CUDA with compute capability 9 or more only. Triton's interpreter runs none of it (the
CPU tests compile the kernels for sm_90 and read the PTX).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

LINE = 128  # bytes of an L2 line: one prefetch each


def whole(weight_bytes: int, device) -> bool:
    """Whether a kernel launched early asks L2 for all of its weight, not only its first tiles: where the
    weight takes at most half the GPU's L2 (an o_proj's 6.4 MB at 4 bits, 26 MB in bf16, of the H100's
    50 MB), so that the reading overlaps the kernel before; a larger weight would evict itself."""
    return weight_bytes <= _l2_bytes(str(device)) // 2


@functools.cache
def _l2_bytes(device: str) -> int:
    import torch

    return torch.cuda.get_device_properties(torch.device(device)).L2_cache_size


def unavailable() -> str | None:
    """None where this Triton can launch early (griddepcontrol in its language, `launch_pdl` among its
    launch options), else why not."""
    try:
        import triton.language.extra.cuda as cuda
        from triton.backends.nvidia.compiler import CUDAOptions
    except Exception as error:  # no Triton, or one without its CUDA backend
        return f"Triton's CUDA backend not importable ({type(error).__name__})"
    if not hasattr(cuda, "gdc_wait") or "launch_pdl" not in getattr(CUDAOptions, "__dataclass_fields__", {}):
        return "this Triton has no programmatic dependent launch (griddepcontrol, launch_pdl)"
    return None


def launch_options(pdl: bool) -> dict:
    """The Triton launch keywords: the PDL attribute where asked (nothing otherwise, so the
    interpreter, which has no such option, sees the launch as before)."""
    return {"launch_pdl": True} if pdl else {}


@functools.lru_cache(maxsize=1)
def jit() -> SimpleNamespace:
    """The Triton helpers, imported lazily: prefetch_l2(pointers) and after_previous()."""
    import triton
    import triton.language as tl

    @triton.jit
    def prefetch_l2(pointers):
        """Ask L2 for the line holding each pointer (no result; nothing waits for it)."""
        tl.inline_asm_elementwise(
            "prefetch.global.L2 [$1];\nmov.u32 $0, 0;", "=r,l", [pointers], dtype=tl.int32, is_pure=False, pack=1
        )

    @triton.jit
    def after_previous():
        """Let the next kernel's programs be scheduled, then wait for the kernel before this one to
        complete (its writes visible). Call it in every program, before reading anything the step
        writes and before any write."""
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()

    return SimpleNamespace(prefetch_l2=prefetch_l2, after_previous=after_previous)
