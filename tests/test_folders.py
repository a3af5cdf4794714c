"""qbench's folders under hostile and careless conditions (issue 21, items 2-6): folder variables that
are empty or relative, files in the caches that qbench did not write, planted links in the lock
folder, bytes flipped in a cache entry, and a cache that cannot be written."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from qbench import kernels
from qbench.cli import main
from qbench.errors import UserError
from qbench.execute.lock import device_lock
from qbench.model.cache import Cache
from qbench.store import Store

TINY = ["--model", "tiny", "--ctx", "16", "--warmup", "1", "--steps", "2", "--rounds", "1", "--graphs", "off"]


def one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("qbench: error:"), result.output
    assert all(word in lines[0] for word in words), lines[0]


# ---- item 2: an empty or relative folder variable never means "here" ------------------------------
def test_an_empty_kernel_cache_variable_clears_nothing_in_the_working_directory(in_tmp, monkeypatch):
    (in_tmp / ".git").mkdir()
    (in_tmp / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (in_tmp / "thesis.tex").write_text("years of work")
    monkeypatch.setenv("QBENCH_KERNEL_CACHE", "")
    one_line_error(CliRunner().invoke(main, ["cache", "clear", "--kernels"]), "QBENCH_KERNEL_CACHE", "empty")
    assert (in_tmp / ".git" / "HEAD").is_file() and (in_tmp / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("variable", ["QBENCH_CACHE_DIR", "QBENCH_KERNEL_CACHE", "QBENCH_LOCK_DIR"])
@pytest.mark.parametrize("value", ["", "relative/folder"])
def test_compare_refuses_an_empty_or_relative_folder_before_any_worker(in_tmp, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(main, ["compare", *TINY, "--backends", "bf16", "--db", "r.sqlite"])
    one_line_error(result, variable, "absolute path")
    assert not (in_tmp / "r.sqlite").exists() and not (in_tmp / "relative").exists()


def test_cache_listing_refuses_a_relative_cache_folder(monkeypatch):
    monkeypatch.setenv("QBENCH_CACHE_DIR", "weights")
    one_line_error(CliRunner().invoke(main, ["cache"]), "QBENCH_CACHE_DIR", "'weights'")


# ---- item 3: the caches list, evict and clear only their own entries ------------------------------
def foreign_files(folder: Path) -> dict[Path, bytes]:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.ones(4)}, str(folder / "my-finetune.safetensors"), metadata={"about": "{}"})
    (folder / "notes.gguf").write_bytes(b"GGUF my notes")
    (folder / ".draft.tmp").write_text("an editor's swap file")
    os.utime(folder / ".draft.tmp", (0, 0))  # old: the stale-temporary sweep must leave it too
    return {path: path.read_bytes() for path in folder.iterdir()}


def test_the_weights_cache_never_lists_evicts_or_clears_files_it_did_not_write(in_tmp):
    folder = in_tmp / "weights-cache"
    theirs = foreign_files(folder)
    cache = Cache(folder, limit_bytes=3000)
    for key in ("a", "b", "c"):
        assert cache.store(key, {"x": torch.zeros(250)}, {"what": key}) == ""  # evicts as it goes
    kept = {e.key for e in cache.entries()}
    assert "c" in kept and kept < {"a", "b", "c"}
    assert all(path.read_bytes() == data for path, data in theirs.items())
    listed = CliRunner().invoke(main, ["cache", "--format", "json"])
    assert listed.exit_code == 0 and {e["key"] for e in json.loads(listed.stdout)} == kept
    cleared = CliRunner().invoke(main, ["cache", "clear"])
    assert cleared.exit_code == 0 and f"removed {len(kept)} weights cache entr" in cleared.output
    assert "3 other file(s)" in cleared.output
    assert {path: path.read_bytes() for path in folder.iterdir()} == theirs


def test_cache_clear_kernels_removes_only_builds_qbench_made(in_tmp, monkeypatch):
    root = in_tmp / "kernels"
    monkeypatch.setenv("QBENCH_KERNEL_CACHE", str(root))
    (root / "my-build").mkdir(parents=True)
    (root / "my-build" / "ext.so").write_bytes(b"mine")
    (root / "readme.txt").write_text("mine too")
    ours = kernels.build_folder("exllamav2_ext-0123456789abcdef")
    (ours / "exllamav2_ext.so").write_bytes(b"built")
    assert kernels.builds() == [ours]
    cleared = CliRunner().invoke(main, ["cache", "clear", "--kernels"])
    assert cleared.exit_code == 0 and "removed 1 kernel build(s)" in cleared.output
    assert not ours.exists()
    assert (root / "my-build" / "ext.so").read_bytes() == b"mine" and (root / "readme.txt").is_file()


# ---- item 4: the lock folder and lock files are checked, never followed ---------------------------
def test_a_planted_lock_folder_link_is_refused_and_its_target_untouched(in_tmp, monkeypatch):
    victim = in_tmp / "victim"
    victim.mkdir(mode=0o755)
    victim.chmod(0o755)
    (in_tmp / "qbench-locks").symlink_to(victim)
    monkeypatch.setenv("QBENCH_LOCK_DIR", str(in_tmp / "qbench-locks"))
    with pytest.raises(UserError, match="symbolic link"):
        with device_lock("cpu", "test"):
            pass
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755 and list(victim.iterdir()) == []


def test_a_planted_lock_file_link_is_refused_and_its_target_unchanged(in_tmp, monkeypatch):
    precious = in_tmp / "shadow"
    precious.write_text("root:x:0:0")
    locks = in_tmp / "locks"
    locks.mkdir()
    (locks / "cpu.lock").symlink_to(precious)
    monkeypatch.setenv("QBENCH_LOCK_DIR", str(locks))
    with pytest.raises(UserError, match="symbolic link"):
        with device_lock("cpu", "test"):
            pass
    result = CliRunner().invoke(main, ["compare", *TINY, "--backends", "bf16", "--db", "r.sqlite"])
    one_line_error(result, "lock file", "cpu.lock", "symbolic link")
    assert precious.read_text() == "root:x:0:0" and not (in_tmp / "r.sqlite").exists()


def test_a_lock_folder_that_is_a_file_is_one_line_before_any_worker(in_tmp, monkeypatch):
    (in_tmp / "not-a-folder").write_text("")
    monkeypatch.setenv("QBENCH_LOCK_DIR", str(in_tmp / "not-a-folder"))
    result = CliRunner().invoke(main, ["compare", *TINY, "--backends", "bf16", "--db", "r.sqlite"])
    one_line_error(result, "lock folder", "not-a-folder", "QBENCH_LOCK_DIR")
    assert not (in_tmp / "r.sqlite").exists()


def test_a_world_writable_lock_folder_without_sticky_bit_is_refused(in_tmp, monkeypatch):
    locks = in_tmp / "open-locks"
    locks.mkdir()
    locks.chmod(0o777)
    monkeypatch.setenv("QBENCH_LOCK_DIR", str(locks))
    with pytest.raises(UserError, match="sticky"):
        with device_lock("cpu", "test"):
            pass


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_lock_folder_of_another_user_is_used_only_if_shared_like_tmp(in_tmp, monkeypatch):
    locks = in_tmp / "their-locks"
    locks.mkdir()
    os.chown(locks, 12345, 12345)
    locks.chmod(0o755)
    monkeypatch.setenv("QBENCH_LOCK_DIR", str(locks))
    with pytest.raises(UserError, match="owned by uid 12345"):
        with device_lock("cpu", "test"):
            pass
    locks.chmod(0o1777)  # as the first user's qbench leaves it: every user's runs share it
    with device_lock("cpu", "root's run"):
        assert "root's run" in (locks / "cpu.lock").read_text()


def test_runs_with_different_tmpdirs_share_one_lock(in_tmp):
    paths = []
    for tmpdir in ("a", "b"):
        (in_tmp / tmpdir).mkdir()
        env = {k: v for k, v in os.environ.items() if k != "QBENCH_LOCK_DIR"}
        env["TMPDIR"] = str(in_tmp / tmpdir)
        code = "from qbench import settings; print(settings.lock_dir())"
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        paths.append(done.stdout.strip())
    assert paths[0] == paths[1] == "/tmp/qbench-locks"


def test_a_lock_file_is_created_for_every_user_and_kept_across_holders(in_tmp):
    with device_lock("cpu", "first holder"):
        path = in_tmp / "locks" / "cpu.lock"
        assert "first holder" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 and path.read_text() == ""
    with device_lock("cpu", "second holder"):
        assert "second holder" in path.read_text()


# ---- item 5: an entry's content is checked on every read --------------------------------------------
def flip_byte(path: Path, from_end: int = 16) -> None:
    data = bytearray(path.read_bytes())
    data[-from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_an_entry_are_detected_removed_and_rebuilt():
    cache = Cache()
    logits = torch.arange(1000, dtype=torch.float32)
    assert cache.store("ref", {"logits": logits}, {"what": "reference logits"}) == ""
    loaded, why = cache.load("ref", "cpu")
    assert why == "" and torch.equal(loaded["logits"], logits)
    flip_byte(cache.path("ref"))  # in the tensor bytes: the length and header still look whole
    loaded, why = cache.load("ref", "cpu")
    assert loaded is None and "damaged and is rebuilt" in why and "sha256" in why
    assert not cache.path("ref").exists() and cache.entries() == []


def test_a_whole_file_entry_is_checked_against_its_digest(in_tmp):
    cache = Cache()
    made = []

    def make(out: Path) -> None:
        made.append(out)
        out.write_bytes(b"GGUF" + bytes(range(256)) * 64)

    path, state = cache.file("gguf-k", ".gguf", make, lambda p: None)
    assert state == "stored" and path.name == "qbench-gguf-k.gguf"
    assert cache.file("gguf-k", ".gguf", make, lambda p: None) == (path, "hit") and len(made) == 1
    flip_byte(path)
    path, state = cache.file("gguf-k", ".gguf", make, lambda p: None)
    assert state.startswith("stored; cached file was damaged and is rebuilt") and len(made) == 2


def test_a_flipped_reference_is_rebuilt_and_the_session_says_so(in_tmp):
    args = ["compare", *TINY, "--backends", "bf16", "--sessions", "1"]
    assert CliRunner().invoke(main, [*args, "--db", "a.sqlite"]).exit_code == 0
    (entry,) = Cache().entries()
    flip_byte(entry.path)
    result = CliRunner().invoke(main, [*args, "--db", "b.sqlite"])
    assert result.exit_code == 0, result.output
    (session,) = Store("b.sqlite", readonly=True).sessions()
    assert session["result"]["status"] == "ok", session["result"].get("reason")
    assert "damaged and is rebuilt" in session["result"]["reference"]


# ---- item 6: a cache that cannot be used means uncached, with a note ------------------------------
def test_a_cache_folder_that_is_a_file_runs_uncached_with_a_note(in_tmp, monkeypatch):
    (in_tmp / "cache-file").write_text("")
    monkeypatch.setenv("QBENCH_CACHE_DIR", str(in_tmp / "cache-file"))
    cache = Cache()
    assert cache.load("k", "cpu") == (None, "not cached")
    assert cache.store("k", {"x": torch.zeros(4)}, {}).startswith("not cached: ")
    result = CliRunner().invoke(main, ["compare", *TINY, "--backends", "bf16", "--sessions", "1", "--db", "r.sqlite"])
    assert result.exit_code == 0, result.output
    (session,) = Store("r.sqlite", readonly=True).sessions()
    assert session["result"]["status"] == "ok", session["result"].get("reason")
    assert "not cached" in session["result"]["reference"]


def test_a_home_under_a_file_means_uncached_not_a_crash(in_tmp, monkeypatch):
    (in_tmp / "home-file").write_text("")
    monkeypatch.delenv("QBENCH_CACHE_DIR")
    monkeypatch.setenv("HOME", str(in_tmp / "home-file"))
    assert Cache().store("k", {"x": torch.zeros(4)}, {}).startswith("not cached: ")


def test_a_whole_file_entry_goes_to_the_session_scratch_where_the_cache_is_unusable(in_tmp, monkeypatch):
    from qbench.execute.worker import OWNER_FILE, SCRATCH_PREFIX

    (in_tmp / "cache-file").write_text("")
    monkeypatch.setenv("QBENCH_CACHE_DIR", str(in_tmp / "cache-file"))
    scratch = in_tmp / f"{SCRATCH_PREFIX}session"
    scratch.mkdir()
    (scratch / OWNER_FILE).write_text(str(os.getpid()))
    monkeypatch.chdir(scratch)
    path, state = Cache().file("gguf-k", ".gguf", lambda out: out.write_bytes(b"GGUF"), lambda p: None)
    assert path.parent == scratch and path.read_bytes() == b"GGUF" and state.startswith("not cached (")


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-1", ""])
def test_a_bad_cache_size_is_one_line_in_cache_and_compare(monkeypatch, value):
    monkeypatch.setenv("QBENCH_CACHE_GB", value)
    one_line_error(CliRunner().invoke(main, ["cache"]), "QBENCH_CACHE_GB", repr(value))
    result = CliRunner().invoke(main, ["compare", *TINY, "--backends", "bf16", "--db", "r.sqlite"])
    one_line_error(result, "QBENCH_CACHE_GB")
