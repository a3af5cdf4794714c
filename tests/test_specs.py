import json

import pytest

from qbench.errors import UserError
from qbench.specs import gpu_for_device, gpu_specs, load_gpu_spec, load_model_spec, model_names


def test_builtin_models_and_their_shapes():
    assert {"qwen2.5-7b", "llama-3.1-8b", "mistral-7b-v0.3", "qwen2.5-0.5b", "smollm2-135m", "tiny"} <= set(
        model_names()
    )
    llama = load_model_spec("llama-3.1-8b")
    assert (llama.num_layers, llama.num_kv_heads, llama.head_dim, llama.qkv_bias) == (32, 8, 128, False)
    assert load_model_spec("qwen2.5-7b").qkv_bias


def test_unknown_model_suggests_close_names():
    with pytest.raises(UserError, match="did you mean qwen2.5-7b"):
        load_model_spec("qwen2.5-7")


def test_config_json_path_and_checkpoint_folder(tmp_path):
    config = json.loads(json.dumps(load_model_spec("tiny").hf_config))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    from_folder = load_model_spec(str(folder))
    from_file = load_model_spec(str(folder / "config.json"))
    assert from_folder.hidden_size == from_file.hidden_size == 256
    assert from_folder.checkpoint == str(folder.resolve())


@pytest.mark.parametrize(
    "device, spec",
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm5"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb-sxm4"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA A10G", "a10g"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("Orin", "jetson-agx-orin"),
    ],
)
def test_device_names_identify_exactly_one_spec(device, spec):
    assert gpu_for_device(device).name == spec
    assert [s.name for s in gpu_specs().values() if s.matches(device)] == [spec]


def test_every_gpu_has_a_sourced_bandwidth_and_unknown_gpus_have_none():
    for spec in gpu_specs().values():
        assert spec.peak_bandwidth_gbps > 0 and spec.bandwidth_source and spec.memory_gib
    assert gpu_for_device("NVIDIA B200").peak_bandwidth_gbps is None
    with pytest.raises(UserError, match="did you mean l4"):
        load_gpu_spec("l4x")
