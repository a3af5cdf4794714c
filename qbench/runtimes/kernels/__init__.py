"""qbench's own Triton kernels for the lean runtime."""

import math


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): a Triton block or tensor dimension."""
    return 1 << max(0, math.ceil(math.log2(max(1, n))))
