"""The correctness gate's limits, torch-free so that reports can say how close a cell came to them
(qbench.session.gate applies them)."""

from fractions import Fraction

LOGIT_TOLERANCE = 0.25  # relative L2 error of the logits vs the reference (a wrong kernel gives ~1)
# Fraction of timed steps whose argmax matches the reference. Real weights give peaked logits, so
# rounding differences rarely flip the argmax. Random (synthetic) weights give a flat 150k-way
# distribution in a network that amplifies rounding: on an H100, bf16 against itself (eager vs a
# graph replay that picks other cuBLAS algorithms) already showed 2.4% logit error and 97% top-1
# agreement, and NF4 against its own dequantised weights 8% and 73%. A wrong kernel agrees ~0%.
# Kept as fractions and compared with whole counts: 27 of 30 steps is exactly 90%, which a float32
# mean (0.89999998) would call a failure.
TOP1_THRESHOLD = {"real": Fraction(9, 10), "synthetic": Fraction(1, 2)}

# A passing cell this close to a limit is flagged `gate-edge` in tables and the deployment report:
# its verdict would flip with a little more rounding noise.
EDGE_ERROR = 0.8 * LOGIT_TOLERANCE  # worst relative logit error at or above this
EDGE_TOP1 = Fraction(1, 10)  # top-1 agreement less than this above its threshold
