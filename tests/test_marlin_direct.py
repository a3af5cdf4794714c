"""awq-marlin without importing gptqmodel per session: the repacking matches gptqmodel's, the library
copy is whole or absent, and a copy that does not load sends the session back through gptqmodel with a
note. (The Marlin GEMM itself runs on CUDA only: the H100 runs check it against the dequantised weights.)"""

from __future__ import annotations

import hashlib
import sys
import threading
import types

import pytest
import torch

from qbench import formats
from qbench.formats import marlin_direct as md


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def _inputs(n: int, k: int, group: int):
    """Deterministic AWQ-layout qzeros, scales and a bias at Marlin's padded shape."""
    pk, pn = formats.marlin_padded_shape(k, n, group)
    groups = pk // group
    qz = torch.arange(groups * pn // 8, dtype=torch.int64).reshape(groups, pn // 8) * 2654435761 % (2**32)
    qz = torch.where(qz >= 2**31, qz - 2**32, qz).to(torch.int32)
    scales = (torch.arange(groups * pn).reshape(groups, pn).float() / 7).half()
    bias = (torch.arange(pn).float() / 3).half()
    return pn, pk, groups, qz, scales, bias


# Digests of gptqmodel 7.6.0's own functions (utils/marlin.py: awq_to_marlin_zero_points,
# marlin_permute_scales with the group and with -1, marlin_permute_bias) on the inputs above,
# computed once with gptqmodel installed; qbench's copies must give the same bytes.
GPTQMODEL_7_6 = {
    (256, 512, 128): ((256, 512), "51ce6476da093531", "f85cc5200f9ba3a3", "8856dd1831bb1e2c", "53ed1bd9f6e46459"),
    (192, 576, 64): ((192, 640), "8ce77cb975c8c8a9", "c076c1d2583d6306", "e2f0e77a1d479314", "53df80268fefc00d"),
}


@pytest.mark.parametrize("shape", sorted(GPTQMODEL_7_6))
def test_repacking_matches_gptqmodel(shape):
    n, k, group = shape
    padded, zeros, scales, bias, channelwise = GPTQMODEL_7_6[shape]
    pn, pk, groups, qz, sc, b = _inputs(n, k, group)
    assert (pn, pk) == padded
    assert _digest(md.awq_to_marlin_zero_points(qz, groups, pn)) == zeros
    assert _digest(md.permute_scales(sc, pk, pn, group)) == scales
    assert _digest(md.permute_bias(b)) == bias
    assert _digest(md.permute_scales(sc[:1], pk, pn, -1)) == channelwise


def test_zero_points_are_only_moved():
    """Each group's zero points come out as a rearrangement of the same values (none made or lost)."""
    _, _, groups, qz, _, _ = _inputs(256, 512, 128)
    out = formats.unpack_columns(md.awq_to_marlin_zero_points(qz, groups, 256), formats.SEQUENTIAL)
    unpacked = formats.unpack_columns(qz, formats.SEQUENTIAL)
    assert torch.equal(out.sort(dim=1).values, unpacked.sort(dim=1).values)
    assert not torch.equal(out, unpacked)


def test_pack_round_trip():
    values = (torch.arange(4 * 64) * 7 % 16).reshape(4, 64)
    packed = formats.pack_columns(values, formats.SEQUENTIAL)
    assert torch.equal(formats.unpack_columns(packed, formats.SEQUENTIAL), values)


def test_uint4_type_id():
    # vLLM's layout: mantissa bits at offset 8, the NaN representation (IEEE 754 = 1) at offset 50.
    assert md.UINT4 == (1 << 50) | (4 << 8)
    assert md.scalar_type_id(4, bias=8) == md.UINT4 | (8 << 17)  # uint4b8, GPTQ's type


def test_copy_is_whole_when_two_sessions_store_at_once(tmp_path):
    source = tmp_path / "built.so"
    source.write_bytes(bytes(range(256)) * 4096)
    folder = tmp_path / "cache"
    threads = [threading.Thread(target=md.store_copy, args=(source, folder)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (folder / f"{md.LIBRARY}.so").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == [".qbench-build", f"{md.LIBRARY}.so"]  # no temporary left


@pytest.fixture
def fake_gptqmodel(monkeypatch, tmp_path):
    """A stand-in gptqmodel whose 'build' registers the two ops (in Python) and records the call."""
    monkeypatch.setenv("QBENCH_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.setattr(md, "_state", {})
    calls = []
    library = torch.library.Library(md.NAMESPACE, "FRAGMENT")

    def prewarm(dtype):
        calls.append(dtype)
        if not hasattr(torch.ops, md.NAMESPACE) or not md._ops_loaded():
            library.define("awq_marlin_repack(Tensor w, int k, int n, int bits) -> Tensor")
            library.define("gptq_marlin_gemm_fp16(Tensor a) -> Tensor")
        return True

    marlin = types.ModuleType("gptqmodel.utils.marlin")
    marlin.prewarm_marlin_extension = prewarm
    marlin.marlin_runtime_error = lambda dtype: "no error"
    for name, module in (("gptqmodel", types.ModuleType("gptqmodel")),
                         ("gptqmodel.utils", types.ModuleType("gptqmodel.utils")),
                         ("gptqmodel.utils.marlin", marlin)):
        monkeypatch.setitem(sys.modules, name, module)
    yield calls
    library._destroy()


def test_a_cached_copy_that_does_not_load_goes_back_through_gptqmodel(fake_gptqmodel):
    folder = md.cache_dir()
    folder.mkdir(parents=True)
    (folder / f"{md.LIBRARY}.so").write_bytes(b"not a library")  # torn or foreign
    how = md.ensure_library()
    assert fake_gptqmodel == [torch.float16]
    assert "through gptqmodel" in how and "cached copy did not load" in how
    assert md.ensure_library() == how and len(fake_gptqmodel) == 1  # once per process


def test_first_session_says_when_it_cannot_find_the_file(fake_gptqmodel, monkeypatch):
    monkeypatch.setattr(md, "loaded_library_path", lambda: None)
    how = md.ensure_library()
    assert "later sessions import gptqmodel too" in how
    assert not md.cache_dir().exists()


def test_cache_key_follows_gptqmodel_version(monkeypatch, tmp_path):
    monkeypatch.setenv("QBENCH_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    root = tmp_path / "gptqmodel"
    root.mkdir()
    monkeypatch.setattr(md, "_gptqmodel_root", lambda: root)
    (root / "version.py").write_text('__version__ = "7.6.0"\n')
    first = md.cache_dir()
    (root / "version.py").write_text('__version__ = "7.7.0"\n')
    assert md.cache_dir() != first
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    assert len({first, md.cache_dir()}) == 2


def test_a_damaged_copy_is_removed_and_copied_again_from_gptqmodel(fake_gptqmodel, monkeypatch, tmp_path):
    source = tmp_path / "built.so"
    source.write_bytes(bytes(range(256)) * 64)
    monkeypatch.setattr(md, "loaded_library_path", lambda: source)
    assert "copied into qbench's kernel cache" in md.ensure_library()
    cached = md.cache_dir() / f"{md.LIBRARY}.so"
    data = bytearray(cached.read_bytes())
    data[100] ^= 0xFF  # the same length: only its sha256 tells
    cached.write_bytes(bytes(data))
    monkeypatch.setattr(md, "_state", {})
    how = md.ensure_library()
    assert "sha256 differs" in how and "through gptqmodel" in how and "copied into qbench's kernel cache" in how
    assert cached.read_bytes() == source.read_bytes() and len(fake_gptqmodel) == 2
