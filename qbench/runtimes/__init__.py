"""Runtimes: what turns a backend's weights into a token, behind the Runner protocol (qbench.api).

  hf     transformers with the decoder's linear layers swapped (what people deploy with transformers)
  lean   qbench's own static-cache decoder (qbench.runtimes.lean): what the kernel can do
A whole engine (llama.cpp, a plugin's) brings its own runner from its backend's `load()`.
"""

LINEAR_RUNTIMES = ("hf", "lean")  # the runtimes every linear-format backend runs under
