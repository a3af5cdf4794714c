"""README, "Extending qbench": a built-in backend, a runtime and a GPU are each one new file plus at
most one registry line. Each test adds a throwaway one exactly that way and runs it."""

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import distribution

from click.testing import CliRunner
from conftest import ROOT, install_plugin

from qbench import DISTRIBUTION
from qbench.cli import main

FAST = ["--model", "tiny", "--ctx", "16", "--warmup", "1", "--steps", "2", "--sessions", "1", "--graphs", "off"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---- (a) a built-in backend, (b) a built-in runtime: one file in the package, one registry line ----

BACKEND_FILE = '''
from qbench.backends.bf16 import Bf16Backend


class ScratchBackend(Bf16Backend):
    """bf16 under another name: a throwaway built-in backend."""

    name = "scratch"
    description = "a throwaway built-in backend"
'''
RUNTIME_FILE = '''
from qbench.runtimes.hf import DecoderRunner


class ScratchRunner(DecoderRunner):
    """hf's loop under another name: a throwaway built-in runtime."""

    runtime = "scratch-rt"
'''
RUNTIME_LINE = (
    '        register_runtime("scratch-rt", "qbench.runtimes.scratch:ScratchRunner", '
    'label="scratch-rt = a throwaway built-in runtime", order=5),\n'
)


def qbench_with(tmp_path, backend: bool = False, runtime: bool = False):
    """A copy of this qbench with a new backend and/or runtime added as README says: its file, and one
    line (the backend's in the installed distribution's entry points, as setup.cfg puts it; the
    runtime's in BUILT_IN). With the backend, a third-party plugin claims its name too. Returns a
    function that runs `qbench ARGS` on the copy."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "qbench", site / "qbench", ignore=shutil.ignore_patterns("__pycache__"))
    installed = distribution(DISTRIBUTION)
    entry_points = installed.read_text("entry_points.txt")
    if backend:
        (site / "qbench" / "backends" / "scratch.py").write_text(BACKEND_FILE)
        entry_points += "\n[qbench.backends]\nscratch = qbench.backends.scratch:ScratchBackend\n"
        impostor = site / "impostor-0.1.dist-info"  # a plugin under the new built-in's name: ignored, no clash
        impostor.mkdir()
        (impostor / "METADATA").write_text("Metadata-Version: 2.1\nName: impostor\nVersion: 0.1\n")
        (impostor / "entry_points.txt").write_text("[qbench.backends]\nscratch = impostor_mod:Impostor\n")
        (site / "impostor_mod.py").write_text(
            "from qbench.backends.bf16 import Bf16Backend\nclass Impostor(Bf16Backend):\n    name = 'scratch'\n"
        )
    if runtime:
        (site / "qbench" / "runtimes" / "scratch.py").write_text(RUNTIME_FILE)
        registry_file = site / "qbench" / "runtimes" / "__init__.py"
        text = registry_file.read_text()
        anchor = text.index("BUILT_IN = {")
        anchor = text.index("        register_runtime(", anchor)
        registry_file.write_text(text[:anchor] + RUNTIME_LINE + text[anchor:])
    info = site / f"qbench_decode-{installed.version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: {installed.version}\n")
    (info / "entry_points.txt").write_text(entry_points)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))

    def qbench(*args):
        command = [sys.executable, "-m", "qbench.cli", *map(str, args)]
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)

    return qbench


def test_a_built_in_backend_is_a_file_and_an_entry_point(tmp_path):
    qbench = qbench_with(tmp_path, backend=True)
    listed = qbench("backends", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    backends = json.loads(listed.stdout)
    assert backends[-1]["name"] == "scratch" and backends[-1]["available"]  # after the ordered built-ins
    assert "is ignored: scratch is qbench's built-in backend" in listed.stderr + listed.stdout
    args = [*FAST, "--backends", "bf16,scratch", "--db", tmp_path / "r.sqlite", "--format", "json"]
    result = qbench("compare", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'scratch' registered by impostor 0.1 (impostor_mod:Impostor) is ignored" in result.stderr
    rows = json.loads(result.stdout)
    assert [(r["backend"], r["status"]) for r in rows] == [("bf16", "ok"), ("scratch", "ok")]
    assert rows[1]["realised_speedup"] > 0  # against bf16, as any backend's


def test_a_built_in_runtime_is_a_file_and_a_registry_line(tmp_path):
    qbench = qbench_with(tmp_path, runtime=True)
    assert "scratch-rt = a throwaway built-in runtime" in " ".join(qbench("compare", "--help").stdout.split())
    listed = json.loads(qbench("backends", "--format", "json").stdout)
    assert next(b for b in listed if b["name"] == "bf16")["runtimes"] == "hf,lean,scratch-rt"
    args = [*FAST, "--backends", "bf16", "--runtimes", "scratch-rt,hf", "--db", tmp_path / "r.sqlite"]
    result = qbench("compare", *args, "--format", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)
    assert [(r["runtime"], r["status"]) for r in rows] == [("hf", "ok"), ("scratch-rt", "ok")]  # by order
    assert rows[1]["runtime_speedup"] > 0  # compared with hf, as lean is


# ---- (b) a plugin's runtime: one module, one entry point --------------------------------------------

RUNTIME_PLUGIN = """
from qbench.runtimes import register_runtime
from qbench.runtimes.hf import DecoderRunner


class EchoRunner(DecoderRunner):
    runtime = "echo"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.notes.append("echo: hf's loop under another name")


RUNTIME = register_runtime("echo", "echo_runtime:EchoRunner", label="echo = hf's loop, from a plugin")
"""


def install_runtime(tmp_path, monkeypatch, dist: str, module: str, source: str, entries: dict[str, str]):
    site = install_plugin(tmp_path / module, monkeypatch, dist, module, source, {})
    (site / f"{module}-0.1.dist-info" / "entry_points.txt").write_text(
        "[qbench.runtimes]\n" + "".join(f"{name} = {module}:{attribute}\n" for name, attribute in entries.items())
    )


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Extending qbench", 1)[1].split("\n## ", 1)[0]


def test_a_plugin_runtime_is_one_module_and_one_entry_point(tmp_path, monkeypatch):
    """The README's example, installed as it says: mypkg/runtime.py and one qbench.runtimes entry."""
    (example,) = [b for b in re.findall(r"```python\n(.*?)```", readme_section(), flags=re.S) if "mypkg" in b]
    (entry,) = re.findall(r"qbench\.runtimes = (mine = mypkg\.runtime:RUNTIME)", example)
    site = install_plugin(tmp_path / "site", monkeypatch, "mypkg", "mypkg", "", {})
    (site / "mypkg" / "runtime.py").write_text(example)
    (site / "mypkg-0.1.dist-info" / "entry_points.txt").write_text(f"[qbench.runtimes]\n{entry}\n")
    monkeypatch.delitem(sys.modules, "mypkg.runtime", raising=False)
    assert "mine = hf's loop, my way" in " ".join(invoke("compare", "--help").output.split())
    args = [*FAST, "--backends", "bf16", "--runtimes", "hf,mine", "--db", "r.sqlite", "--format", "json"]
    result = invoke("compare", *args)
    assert result.exit_code == 0, result.output
    rows = {r["runtime"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"hf", "mine"} and all(r["status"] == "ok" for r in rows.values()), rows
    assert rows["mine"]["runtime_speedup"] > 0


def test_a_plugin_runtime_cannot_take_a_built_in_name_and_a_clash_is_named(tmp_path, monkeypatch):
    from qbench.runtimes import get_runtime, linear_runtimes, registry

    body = RUNTIME_PLUGIN.replace('"echo"', '"{name}"').replace("echo_runtime", "{module}")
    for dist, module, name in [("fake-hf", "fake_hf", "hf"), ("one", "one_mod", "twin"), ("two", "two_mod", "twin")]:
        install_runtime(tmp_path, monkeypatch, dist, module, body.format(name=name, module=module), {name: "RUNTIME"})
    found = registry()
    assert get_runtime("hf").runner == "qbench.runtimes.hf:DecoderRunner"
    assert any("'hf' registered by fake-hf 0.1" in w and "ignored" in w for w in found.warnings)
    assert "one 0.1" in found.unusable["twin"] and "two 0.1" in found.unusable["twin"]
    assert linear_runtimes() == ("hf", "lean")
    result = invoke("compare", *FAST, "--backends", "bf16", "--runtimes", "twin", "--db", "r.sqlite")
    assert result.exit_code == 2 and "--runtimes must be one or more of hf, lean" in result.output


def test_a_plugin_runtime_that_breaks_at_import_is_named_and_the_rest_run(tmp_path, monkeypatch):
    from qbench.runtimes import registry, runtime_names

    install_runtime(tmp_path, monkeypatch, "broken", "broken_rt", "raise SystemExit(3)\n", {"broken": "RUNTIME"})
    found = registry()
    assert "broken" not in found.runtimes and "SystemExit" in found.unusable["broken"]
    assert runtime_names() == ["hf", "lean", "llamacpp"]


# ---- (d) a GPU: one file in qbench/data/gpus --------------------------------------------------------

SCRATCH_GPU = {
    "description": "A throwaway GPU",
    "peak_bandwidth_gbps": 1000,
    "memory_gib": 16,
    "bandwidth_source": "made up for a test",
    "device_patterns": ["Scratch 9000"],
}


def gpu_folder_with(tmp_path, monkeypatch, files: dict[str, str]):
    import qbench.specs

    folder = tmp_path / "gpus"
    shutil.copytree(ROOT / "qbench" / "data" / "gpus", folder)
    for name, text in files.items():
        (folder / name).write_text(text)
    monkeypatch.setattr(qbench.specs, "gpu_folder", lambda: folder)
    return folder


def test_a_gpu_is_one_file(tmp_path, monkeypatch):
    before = json.loads(invoke("gpus", "--format", "json").stdout)
    gpu_folder_with(tmp_path, monkeypatch, {"scratch-9000.json": json.dumps(SCRATCH_GPU)})
    after = json.loads(invoke("gpus", "--format", "json").stdout)
    assert after[:-1] == before  # the others unchanged, in their order; a file without "order" comes last
    assert after[-1] == {
        "name": "scratch-9000",
        "peak_bandwidth_gbps": 1000.0,
        "memory_gib": 16.0,
        "matches": "Scratch 9000",
        "source": "made up for a test",
    }
    floor = invoke("floor", "--model", "tiny", "--gpu", "scratch-9000", "--ctx", "512", "--format", "json")
    (row,) = json.loads(floor.stdout)
    assert row["gpu"] == "scratch-9000" and row["floor_ms"] == row["total"] / 1000e9 * 1e3
    from qbench.specs import gpu_for_device

    assert gpu_for_device("NVIDIA Scratch 9000").name == "scratch-9000"


def test_the_gpu_files_keep_every_field_of_the_old_table():
    from qbench.specs import gpu_specs

    specs = gpu_specs()
    assert list(specs)[:5] == ["h100-sxm5", "h100-pcie", "h200", "a100-80gb-sxm4", "a100-40gb"]
    assert len(specs) == 10 and all(s.sm_count and s.l2_mib and s.boost_clock_mhz for s in specs.values())
    h100 = specs["h100-sxm5"]
    assert (h100.peak_bandwidth_gbps, h100.ray_accelerator_type, h100.device_patterns) == (
        3350.0,
        "H100",
        ("H100 80GB HBM3", "H100 SXM"),
    )


def test_a_bad_gpu_file_is_one_line_naming_it(tmp_path, monkeypatch):
    for name, text in [
        ("broken.json", "{not json"),
        ("partial.json", json.dumps({"description": "no bandwidth"})),
        ("Upper Case.json", json.dumps(SCRATCH_GPU)),
        ("badpattern.json", json.dumps({**SCRATCH_GPU, "device_patterns": ["(unclosed"]})),
    ]:
        folder = gpu_folder_with(tmp_path / name, monkeypatch, {name: text})
        result = invoke("gpus")
        assert result.exit_code == 2, result.output
        (line,) = result.output.strip().splitlines()
        assert line.startswith(f"qbench: error: GPU spec {folder / name} cannot be read"), line
        if name == "partial.json":
            assert "it lacks peak_bandwidth_gbps, memory_gib, bandwidth_source, device_patterns" in line


def test_the_readme_says_where_each_extension_goes():
    section = readme_section()
    for where in ("qbench/backends/", "setup.cfg", "qbench/runtimes/", "register_runtime", "qbench.runtimes",
                  "qbench/render/", "FORMATS", "qbench/data/gpus/"):  # fmt: skip
        assert where in section, where
    (gpu,) = re.findall(r"```json\n(.*?)```", section, flags=re.S)
    assert set(json.loads(gpu)) == {"description", "peak_bandwidth_gbps", "memory_gib", "bandwidth_source",
                                    "device_patterns"}  # fmt: skip


def test_a_runtime_record_is_checked_when_made(tmp_path, monkeypatch):
    import pytest

    from qbench.runtimes import register_runtime, registry

    for name, runner, label in [("Mine", "a.b:C", "x"), ("mine", "a.b.C", "x"), ("mine", "a.b:C", "two\nlines")]:
        with pytest.raises(ValueError, match="runtime"):
            register_runtime(name, runner, label=label)
    body = "from qbench.api import register_runtime\nRUNTIME = register_runtime('other', 'a.b:C', label='x')\n"
    install_runtime(tmp_path, monkeypatch, "misnamed", "misnamed_rt", body, {"mine": "RUNTIME"})
    assert "not the register_runtime('mine', ...) record" in registry().unusable["mine"]
