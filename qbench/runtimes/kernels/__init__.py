"""qbench's own Triton kernels for the lean runtime."""

import math


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): a Triton block or tensor dimension."""
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def compile_for_h100(function, signature: dict, fixed: dict, aligned: tuple = (), warps: int = 4):
    """A Triton kernel compiled for an H100 (sm_90) on any machine, no GPU needed: `signature` gives
    every argument's type in the kernel's order (constexpr ones "constexpr"), `fixed` the values of
    those and of any argument to specialise, `aligned` the arguments a launch sees divisible by 16 (as
    Triton specialises them: what lets it vectorise). Where this Triton has no ptxas, triton.compile
    raises a RuntimeError naming it after its front end ran. For the tests and tools; qbench's
    launches compile as usual."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(signature)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    source = ASTSource(function, signature, {(names.index(n),): v for n, v in fixed.items()}, attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
