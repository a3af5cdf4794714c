"""Quality on a fixed English text (qbench/data/quality.txt), for real-weight quality checks.

Random weights have no quality to lose, so this runs only where the weights are real (a GGUF or a
checkpoint folder with a tokenizer). Each session measures, over the text's first MAX_TOKENS tokens:
  perplexity   exp(mean next-token negative log-likelihood) of the backend's own logits;
  KL           KL(P_16 || P_backend) per position against the 16-bit reference, the same weights
               loaded by the bf16 backend under hf (mean and 99th percentile, in nats, as llama.cpp's
               `llama-perplexity --kl-divergence` reports them), and top-1 agreement with it.
The reference is computed once per weights file, text and software and kept in the weights cache.
Where the real weights are themselves already 4-bit (the GGUFs the tests use), their dequantised
tensors are the reference: the figures then measure re-quantisation error on real weight
statistics, not the original model's loss, and the report says so.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from qbench.model.build import packaged_gguf

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
    from qbench.model import gguf_files

    try:
        path = packaged_gguf(spec) if weights == "gguf" else Path(weights)
        if path.suffix == ".gguf":
            with gguf_files.read_once():  # the fields the model's load parses too
                return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name), None
        return AutoTokenizer.from_pretrained(str(path)), None
    except Exception as error:  # a broken tokenizer costs the quality check, not the latency row
        return None, f"tokenizer did not load: {type(error).__name__}: {error}"[:300]


def text_tokens(tokenizer) -> list[int]:
    """The quality text's token ids (at most MAX_TOKENS)."""
    return tokenizer(quality_text()).input_ids[:MAX_TOKENS]


def ids_key(spec, weights: str) -> str | None:
    """The weights-cache key of the quality text's token ids: the tokenizer's files (a GGUF, or a
    folder's TOKENIZER_FILES: path, size, modification time), the text, and the tokenizing software;
    None where no such file is there to key them by (nothing is then kept)."""
    import tokenizers
    import transformers

    import qbench
    from qbench.model.cache import key_of

    path = packaged_gguf(spec) if weights == "gguf" else Path(weights)
    files = [path] if path.is_file() else [path / name for name in TOKENIZER_FILES if (path / name).is_file()]
    if not files:
        return None
    ingredients = {
        "what": "quality text ids",
        "files": [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files],
        "text": key_of({"text": quality_text()}, 64),
        "max_tokens": MAX_TOKENS,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "qbench": qbench.__version__,
    }
    return "ids-" + key_of(ingredients)


def text_ids(spec, weights: str) -> tuple[list[int] | None, str | None]:
    """(the quality text's token ids, None), or (None, why not) where the weights come without a
    usable tokenizer. Made once per tokenizer, text and software, and kept in the weights cache: a
    GGUF's tokenizer takes seconds to build (transformers converts its vocabulary and merges), the
    ids read back take milliseconds."""
    from qbench.model.cache import Cache

    missing = tokenizer_missing(weights)
    if missing:
        return None, missing
    try:
        key = ids_key(spec, weights)
    except OSError:  # a file vanished under us: the tokenizer's load says why
        key = None
    cache = Cache()
    if key is not None:
        stored, _ = cache.load(key, "cpu")
        if stored is not None:
            return stored["ids"].tolist(), None
    tokenizer, missing = load_tokenizer(spec, weights)
    if tokenizer is None:
        return None, missing
    ids = text_tokens(tokenizer)
    if key is not None:
        cache.store(key, {"ids": torch.tensor(ids, dtype=torch.int64)}, {"what": "token ids of the quality text"})
    return ids, None


@torch.inference_mode()
def perplexity(runner, text: list[int], device: str) -> tuple[float, int, torch.Tensor]:
    """exp(mean next-token negative log-likelihood) over the text's first MAX_TOKENS tokens (`text_ids`),
    from the runner's `score(ids) -> logits [T, vocab]` (Runner protocol); with the token count and the
    logits."""
    ids = torch.tensor(text, device=device)
    logits = runner.score(ids).float()
    loss = torch.nn.functional.cross_entropy(logits[:-1], ids.to(logits.device)[1:])
    return float(torch.exp(loss)), int(ids.numel()), logits


def kl_divergence(reference_logits: torch.Tensor, logits: torch.Tensor) -> dict:
    """KL(P_ref || P) per position (nats) from two [T, vocab] logit tensors: mean and 99th percentile,
    with the fraction of positions whose most likely token agrees."""
    reference = torch.log_softmax(reference_logits.float(), dim=-1)
    measured = torch.log_softmax(logits.float(), dim=-1)
    per_position = (reference.exp() * (reference - measured)).sum(dim=-1).clamp_min(0.0)
    agree = (reference.argmax(dim=-1) == measured.argmax(dim=-1)).float().mean()
    return {
        "kl_mean": float(per_position.mean()),
        "kl_p99": float(torch.quantile(per_position, 0.99)),
        "top1_agreement": float(agree),
        "positions": int(per_position.numel()),
    }


def quality_key(spec, weights: str, ids: list[int], device: str) -> str:
    """The cache key of the 16-bit reference scores of the weights on `ids`: the weights file's
    identity (path, size, modification time; for `gguf`, the spec's packaged file), the tokens and
    the software that computes them."""
    import os

    import transformers

    import qbench
    from qbench.model.cache import key_of

    path = packaged_gguf(spec) if weights == "gguf" else Path(weights)
    stat = os.stat(path) if path.is_file() else None
    ingredients = {
        "what": "quality reference",
        "weights": str(path.resolve()),
        "size": stat.st_size if stat else None,
        "mtime": stat.st_mtime_ns if stat else None,
        "ids": key_of({"ids": ids}, 64),
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "qbench": qbench.__version__,
    }
    return "quality-" + key_of(ingredients)


@torch.inference_mode()
def reference_scores(spec, options, ids: list[int]) -> tuple[torch.Tensor, str]:
    """Logits [T, vocab] (float32, host) of the 16-bit reference on the quality text, and where they
    came from: the weights cache, or the bf16 backend under hf loaded for this (then cached)."""
    from dataclasses import replace

    from qbench.model.cache import Cache
    from qbench.registry import load_backend

    key = quality_key(spec, options.weights, ids, options.device)
    cache = Cache()
    stored, _ = cache.load(key, "cpu")
    if stored is not None:
        return stored["logits"], "16-bit reference read from the weights cache"
    runner = load_backend("bf16").load(spec, replace(options, runtime="hf", weights_cache=False))
    logits = runner.score(torch.tensor(ids, device=options.device)).float().cpu()
    del runner
    if options.device == "cuda":
        torch.cuda.empty_cache()
    not_stored = cache.store(key, {"logits": logits}, {"what": "16-bit quality reference logits"})
    return logits, "16-bit reference computed (bf16 under hf)" + (f"; {not_stored}" if not_stored else "")
