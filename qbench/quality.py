"""Perplexity on a fixed English text (qbench/data/quality.txt), for real-weight quality checks.

Random weights have no quality to lose, so this runs only where the weights are real (a GGUF or a
checkpoint folder with a tokenizer). The comparison with bf16 happens in the report.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from qbench.model import packaged_gguf

MAX_TOKENS = 512


def quality_text() -> str:
    return resources.files("qbench").joinpath("data/quality.txt").read_text()


def load_tokenizer(spec, weights: str):
    from transformers import AutoTokenizer

    if weights == "gguf":
        path = packaged_gguf(spec)
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    path = Path(weights)
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(str(path))


@torch.inference_mode()
def perplexity(model: torch.nn.Module, tokenizer, device: str) -> tuple[float, int]:
    """exp(mean next-token negative log-likelihood) over the text's first MAX_TOKENS tokens."""
    ids = tokenizer(quality_text(), return_tensors="pt").input_ids[:, :MAX_TOKENS].to(device)
    logits = model(input_ids=ids).logits.float()
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    return float(torch.exp(loss)), int(ids.shape[1])
