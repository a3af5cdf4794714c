"""The kernel build cache: a cached build is reused only for the same sources, headers and flags."""

from pathlib import Path

from qbench import kernels


def test_cache_key_follows_sources_headers_and_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    source, header = tmp_path / "a.cu", tmp_path / "sub" / "b.cuh"
    header.parent.mkdir()
    source.write_text("kernel")
    header.write_text("v1")
    first = kernels.build_key([source, header], ["-O3"])
    assert kernels.build_key([header, source], ["-O3"]) == first  # order does not matter
    assert kernels.build_key([source, header], ["-O2"]) != first
    header.write_text("v2")
    assert kernels.build_key([source, header], ["-O3"]) != first
    with_v2 = kernels.build_key([source, header], ["-O3"])
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    assert kernels.build_key([source, header], ["-O3"]) != with_v2  # another GPU architecture


def test_cache_root_is_configurable(monkeypatch, tmp_path):
    monkeypatch.setenv("QBENCH_KERNEL_CACHE", str(tmp_path / "k"))
    assert kernels.cache_root() == Path(tmp_path / "k")
