"""qbench: which quantisation backend to deploy for batch-1 LLM decode, and why."""

__version__ = "0.1.0"
