"""qbench's own Triton kernels for the lean runtime."""
