"""qbench: which quantisation backend to deploy for batch-1 LLM decode, and why."""

__version__ = "0.1.0"
# The name on PyPI: `qbench` there is another project (a LIMS SDK); the import and the command stay qbench.
DISTRIBUTION = "qbench-decode"
