"""How many KV-cache positions a session uses: the numbers the planner checks against the model's
limit before any worker starts, and the runner and session allocate. Torch-free on purpose."""

CAPTURE_WARMUP_STEPS = 3  # eager steps on a side stream before a CUDA graph is captured
SPARE_POSITIONS = CAPTURE_WARMUP_STEPS + 1  # beyond a block: the capture warm-up and one profiled step


def cache_positions(ctx: int, warmup: int, steps: int) -> int:
    """The prompt, the warm-up and the timed steps of a block, and the spare positions."""
    return ctx + warmup + steps + SPARE_POSITIONS


# Cache room beyond a block for its energy window (qbench.session.decode.energy_window): the window needs
# ENERGY_WINDOW_REFRESHES refreshes of NVML's counter (the H100s' refresh interval: results/h100/formats8/README.md),
# which 1024 positions give for any but the fastest steps (faster ones say "not measured", with the numbers).
# lean allocates it where its attention reads only up to the position (qbench/runtimes/lean.py); it
# costs layers x 2 x kv heads x head_dim x 2 bytes a position (Qwen2.5-7B: 56 MiB).
ENERGY_POSITIONS = 1024


def energy_positions(ctx: int, warmup: int, steps: int, limit: int | None) -> int:
    """The energy window's room: ENERGY_POSITIONS, fewer where the model's positions end sooner."""
    left = ENERGY_POSITIONS if limit is None else limit - cache_positions(ctx, warmup, steps)
    return max(0, min(ENERGY_POSITIONS, left))
