"""gemlite's autotune winners kept across sessions in qbench's kernel cache (backends/gemlite_formats.py):
where the file lives, that it is written whole and merged, that a damaged or mismatched file is
ignored with a note, and the backend's prepare()/finish() around it, with a fake gemlite (the real
one imports only on CUDA)."""

import json
import os
import sys
import types

import pytest

from qbench import kernels
from qbench.backends import gemlite_formats as gl
from qbench.registry import load_backend

KEY = gl.autotune_key("0.6.0.post2", "3.5.0", "2.11.0+cu130", "NVIDIA H100 80GB HBM3")
WINNER = {"BLOCK_SIZE_N": 32, "SPLIT_K": 2, "num_warps": 4, "num_stages": 1}


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("QBENCH_KERNEL_CACHE", str(tmp_path / "kernels"))
    return tmp_path / "kernels"


def dumper(config):
    """A stand-in for GemLiteLinear.cache_config: writes gemlite's layout to the file it is given."""

    def dump(filename):
        with open(filename, "w") as out:
            json.dump(config, out)

    return dump


def test_the_file_is_in_a_marked_folder_of_the_kernel_cache_one_per_key(cache_root):
    path = gl.autotune_path(KEY)
    assert path.parent == cache_root / gl.AUTOTUNE_FOLDER and path.suffix == ".json"
    assert path.parent in kernels.builds()  # qbench's marker: `cache clear --kernels` removes it, nothing else
    for field in KEY:
        other = gl.autotune_path(dict(KEY, **{field: "other"}))
        assert other != path and other.parent == path.parent


def test_saved_winners_are_loaded_by_the_next_session(cache_root):
    path = gl.autotune_path(KEY)
    fresh = {}
    assert "measured fresh (none stored)" in gl.load_autotune(fresh, path, KEY) and fresh == {}
    note = gl.save_autotune(dumper({"GEMV_SPLITK": {"(1, 3584, 3584, 3584, 1, 2)": WINNER}}), path, KEY)
    assert note.startswith("gemlite autotune: saved 1 configs")
    stored = json.loads(path.read_text())
    assert stored["made_by"] == "qbench" and stored["key"] == KEY
    config_cache = {"GEMV_SPLITK": {"shipped": WINNER}}  # what gemlite loaded from its own h100.json
    note = gl.load_autotune(config_cache, path, KEY)
    assert note.startswith("gemlite autotune: loaded 1 stored configs")
    assert config_cache["GEMV_SPLITK"] == {"shipped": WINNER, "(1, 3584, 3584, 3584, 1, 2)": WINNER}


def test_two_sessions_saving_keep_both_and_leave_no_temporaries(cache_root):
    path = gl.autotune_path(KEY)
    gl.save_autotune(dumper({"GEMV_SPLITK": {"a": WINNER}}), path, KEY)
    # the second session loaded before the first saved: its own winners hold only "b"
    gl.save_autotune(dumper({"GEMV_SPLITK": {"b": WINNER}, "GEMM": {"c": WINNER}}), path, KEY)
    config = json.loads(path.read_text())["config"]
    assert set(config["GEMV_SPLITK"]) == {"a", "b"} and set(config["GEMM"]) == {"c"}
    left = sorted(p.name for p in path.parent.iterdir())
    assert left == sorted([kernels.MARKER, path.name, f".{path.name}.lock"])


def test_a_save_that_fails_midway_leaves_the_stored_file_whole(cache_root):
    path = gl.autotune_path(KEY)
    gl.save_autotune(dumper({"GEMV_SPLITK": {"a": WINNER}}), path, KEY)
    before = path.read_bytes()

    def broken(filename):
        with open(filename, "w") as out:
            out.write('{"GEMV_SPLITK": {"b": ')  # gemlite died while writing
        raise RuntimeError("killed")

    note = gl.save_autotune(broken, path, KEY)
    assert note.startswith("gemlite autotune: not saved (RuntimeError")
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith((".tmp", ".gemlite"))]
    bad_layout = gl.save_autotune(dumper({"GEMV_SPLITK": {"b": {"SPLIT_K": 2}}}), path, KEY)
    assert "not saved" in bad_layout and path.read_bytes() == before


@pytest.mark.parametrize(
    "content",
    [b"\x00\xff not json", b'{"made_by": "qbench", "key": ', b"[1, 2]", b'{"GEMV_SPLITK": {}}'],
    ids=["bytes", "truncated", "not-a-dict", "gemlite-own-file"],
)
def test_a_damaged_file_is_ignored_with_a_note(cache_root, content):
    path = gl.autotune_path(KEY)
    path.write_bytes(content)
    config_cache = {}
    note = gl.load_autotune(config_cache, path, KEY)
    assert "measured fresh" in note and "damaged" in note and config_cache == {}
    # a damaged entry (a config without num_warps) would break gemlite's pruner: the file is ignored
    path.write_text(json.dumps({"made_by": "qbench", "key": KEY, "config": {"GEMV": {"s": {"SPLIT_K": 1}}}}))
    assert "damaged" in gl.load_autotune(config_cache, path, KEY) and config_cache == {}
    # and a save replaces it with a whole file
    assert "saved" in gl.save_autotune(dumper({"GEMV": {"s": WINNER}}), path, KEY)
    assert json.loads(path.read_text())["config"] == {"GEMV": {"s": WINNER}}


def test_a_file_made_for_another_key_is_ignored(cache_root):
    path = gl.autotune_path(KEY)
    other = dict(KEY, gpu="NVIDIA A100-SXM4-80GB")
    path.write_text(json.dumps({"made_by": "qbench", "key": other, "config": {"GEMV": {"s": WINNER}}}))
    config_cache = {}
    note = gl.load_autotune(config_cache, path, KEY)
    assert "A100" in note and "ignored" in note and config_cache == {}
    gl.save_autotune(dumper({"GEMV": {"t": WINNER}}), path, KEY)  # the other card's entries are not merged in
    assert json.loads(path.read_text())["config"] == {"GEMV": {"t": WINNER}}


@pytest.fixture
def fake_gemlite(monkeypatch):
    """`import gemlite` and `from gemlite import core` give fakes; GemliteBackend's class state is fresh."""
    core = types.ModuleType("gemlite.core")
    core.selected_tag = "/site/gemlite/configs/h100.json"
    core.GEMLITE_TRITON_CONFIG_CACHE = {}
    core.winners = {}  # what this process "autotuned"
    core.GemLiteLinear = types.SimpleNamespace(cache_config=lambda filename: dumper(core.winners)(filename))
    core.native_atomic_bf16 = []  # what set_native_atomic_bfp16 was called with
    core.set_native_atomic_bfp16 = core.native_atomic_bf16.append
    package = types.ModuleType("gemlite")
    package.__version__ = "0.6.0.post2"
    package.core = core
    monkeypatch.setitem(sys.modules, "gemlite", package)
    monkeypatch.setitem(sys.modules, "gemlite.core", core)
    monkeypatch.setattr(gl.GemliteBackend, "imported_version", "")
    monkeypatch.setattr(gl.GemliteBackend, "loaded_notes", [])
    monkeypatch.setattr(gl.GemliteBackend, "autotune_file", None)
    monkeypatch.setattr(gl.torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setenv("TRITON_CACHE_DIR", "")  # unset for the backend; put back afterwards
    return core


def test_a_session_loads_before_its_first_forward_and_saves_after_its_blocks(cache_root, fake_gemlite):
    backend = load_backend("fp8-wo")
    backend.prepare("cuda")
    notes = backend.load_notes()
    assert any("measured fresh (none stored)" in n for n in notes), notes
    assert os.environ["TRITON_CACHE_DIR"] == str(cache_root / gl.TRITON_FOLDER)
    assert cache_root / gl.TRITON_FOLDER in kernels.builds()
    fake_gemlite.winners = {"GEMV_SPLITK": {"(1, 3584, 18944)": WINNER}}
    [saved] = backend.finish()
    assert saved.startswith("gemlite autotune: saved 1 configs")
    # the next session (a new process: fresh gemlite state) loads them before its first forward
    gl.GemliteBackend.imported_version = ""
    fake_gemlite.GEMLITE_TRITON_CONFIG_CACHE = {}
    backend.prepare("cuda")
    assert any(n.startswith("gemlite autotune: loaded 1 stored configs") for n in backend.load_notes())
    assert fake_gemlite.GEMLITE_TRITON_CONFIG_CACHE == {"GEMV_SPLITK": {"(1, 3584, 18944)": WINNER}}


def test_gemlite_int4_adds_its_split_k_sums_in_float32_and_says_so(cache_root, fake_gemlite):
    """gemlite's default (bf16 atomic adds into a bf16 output) failed the layer check on the H100's
    K = 18,944 layer; gemlite-int4 turns it off, the 8-bit backends leave gemlite as it is."""
    backend = load_backend("fp8-wo")
    backend.prepare("cuda")
    assert fake_gemlite.native_atomic_bf16 == [] and gl.GemliteInt4Backend.FLOAT32_SUMS_NOTE not in backend.load_notes()
    gl.GemliteBackend.imported_version = ""  # the next session: a new process
    backend = load_backend("gemlite-int4")
    backend.prepare("cuda")
    assert fake_gemlite.native_atomic_bf16 == [False]
    assert gl.GemliteInt4Backend.FLOAT32_SUMS_NOTE in backend.load_notes()
    backend.prepare("cpu")  # nothing on a machine without CUDA (gemlite is never imported there)
    assert fake_gemlite.native_atomic_bf16 == [False]


def test_an_unusable_cache_folder_costs_a_note_not_the_session(tmp_path, monkeypatch, fake_gemlite):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("QBENCH_KERNEL_CACHE", str(blocker))
    backend = load_backend("int8-wo")
    backend.prepare("cuda")
    assert any("measured fresh (no stored file" in n for n in backend.load_notes())
    assert backend.finish() == []


def test_a_planted_link_as_the_lock_file_is_not_followed(cache_root, tmp_path):
    """qbench runs as root on shared hosts: a link planted where the lock file goes must not make it
    create or open a file elsewhere; the save is skipped with a note, never the session."""
    path = gl.autotune_path(KEY)
    target = tmp_path / "elsewhere" / "not-qbenchs"
    target.parent.mkdir()
    (path.parent / f".{path.name}.lock").symlink_to(target)
    note = gl.save_autotune(dumper({"GEMV_SPLITK": {"a": WINNER}}), path, KEY)
    assert note.startswith("gemlite autotune: not saved"), note
    assert not target.exists() and not path.exists()
