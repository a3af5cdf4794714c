"""bf16 weights, transformers with PyTorch SDPA attention and a static KV cache: the baseline."""

from qbench.api import Backend


class Bf16Backend(Backend):
    name = "bf16"
    description = "bf16 weights, transformers + PyTorch SDPA, static KV cache (the baseline)"
    kernel = "cuBLAS GEMV via torch.nn.functional.linear (CPU: oneDNN/ATen)"
    compute_dtype = "bfloat16"
    bits = 16
    baseline = True
    lean_compile = True  # plain aten ops: torch.compile traces them
