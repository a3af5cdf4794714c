"""Pre-quantised checkpoints: an AWQ folder as AutoAWQ saves it loads with its packed tensors intact."""

import json

import torch
from safetensors.torch import save_file

from qbench import formats
from qbench.backend import LoadOptions, PackedFormatBackend
from qbench.model.build import build_model, quantize_decoder_linears
from qbench.specs import load_model_spec


class AwqOnCpu(PackedFormatBackend):
    """Runs AWQ tensors by dequantising them: lets the loader be tested without a GPU kernel."""

    name = "awq-cpu-test"
    bits = 4

    def quantize_tensors(self, weight, group_size):
        return formats.awq_quantize(weight, group_size)

    def make_linear(self, tensors, in_features, out_features, bias, group_size):
        module = torch.nn.Linear(in_features, out_features, bias=bias is not None)
        module.weight.data = formats.awq_dequantize(tensors, group_size)
        if bias is not None:
            module.bias.data = bias
        return module


def test_awq_checkpoint_folder_round_trips(tmp_path):
    spec = load_model_spec("tiny")
    source, _ = build_model(spec, LoadOptions(device="cpu", seed=3), dtype="float32")
    state = {}
    for name, tensor in source.state_dict().items():
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and module.rsplit(".", 1)[-1].endswith("_proj"):
            for key, value in formats.awq_quantize(tensor, 128).items():
                state[f"{module}.{key}"] = value
        else:
            state[name] = tensor.contiguous()
    folder = tmp_path / "tiny-awq"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    config = dict(spec.hf_config, quantization_config={"quant_method": "awq", "bits": 4, "group_size": 128})
    (folder / "config.json").write_text(json.dumps(config))

    model, packed = build_model(spec, LoadOptions(device="cpu", weights=str(folder), seed=99), dtype="float32")
    assert len(packed) == 4 * 7  # every decoder linear of the 4 layers arrived packed
    norm = "model.layers.0.input_layernorm.weight"
    assert torch.equal(model.state_dict()[norm], source.state_dict()[norm])  # float tensors from the file
    quantize_decoder_linears(model, AwqOnCpu(), 128, packed)
    loaded = model.model.layers[2].mlp.down_proj.weight
    original = source.model.layers[2].mlp.down_proj.weight
    expected = formats.awq_dequantize(formats.awq_quantize(original, 128), 128)
    assert torch.equal(loaded, expected)
