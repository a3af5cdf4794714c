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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def tokenizer_missing(weights: str) -> str | None:
    """Why real weights come without a tokenizer (None where they have one): a GGUF carries its
    own; a checkpoint folder needs one of TOKENIZER_FILES."""
    path = Path(weights)
    if weights == "gguf" or path.suffix == ".gguf":
        return None
    if path.is_dir() and not any((path / name).exists() for name in TOKENIZER_FILES):
        return f"no tokenizer in {path} (none of {', '.join(TOKENIZER_FILES)})"
    return None


def load_tokenizer(spec, weights: str):
    """(tokenizer, None), or (None, why not) where the weights come without a usable tokenizer."""
    from transformers import AutoTokenizer

    missing = tokenizer_missing(weights)
    if missing:
        return None, missing
    try:
        if weights == "gguf":
            path = packaged_gguf(spec)
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name), None
        path = Path(weights)
        if path.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name), None
        return AutoTokenizer.from_pretrained(str(path)), None
    except Exception as error:  # a broken tokenizer costs the quality check, not the latency row
        return None, f"tokenizer did not load: {type(error).__name__}: {error}"[:300]


def text_tokens(tokenizer) -> list[int]:
    """The quality text's token ids (at most MAX_TOKENS)."""
    return tokenizer(quality_text()).input_ids[:MAX_TOKENS]


@torch.inference_mode()
def perplexity(runner, tokenizer, device: str) -> tuple[float, int]:
    """exp(mean next-token negative log-likelihood) over the text's first MAX_TOKENS tokens, from the
    runner's `score(ids) -> logits [T, vocab]` (Runner protocol)."""
    ids = torch.tensor(text_tokens(tokenizer), device=device)
    logits = runner.score(ids).float()
    loss = torch.nn.functional.cross_entropy(logits[:-1], ids[1:])
    return float(torch.exp(loss)), int(ids.numel())
