"""How many KV-cache positions a session uses: the numbers the planner checks against the model's
limit before any worker starts, and the runner and session allocate. Torch-free on purpose."""

CAPTURE_WARMUP_STEPS = 3  # eager steps on a side stream before a CUDA graph is captured
SPARE_POSITIONS = CAPTURE_WARMUP_STEPS + 1  # beyond a block: the capture warm-up and one profiled step


def cache_positions(ctx: int, warmup: int, steps: int) -> int:
    """The prompt, the warm-up and the timed steps of a block, and the spare positions."""
    return ctx + warmup + steps + SPARE_POSITIONS
