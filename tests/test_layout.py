"""The repository's layout keeps its promises (issue 22, item 6): results live in results/, not in the
product's docstrings and comments; every path the code, the tests and the READMEs cite under results/
exists; and results/README.md indexes every file kept there."""

import ast
import fnmatch
import io
import os
import re
import shutil
import subprocess
import sys
import time
import tokenize
from pathlib import Path

from conftest import kept_results

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = [ROOT / "qbench"]

# A figure with a unit of time or of transfer rate: "0.7 ms", "100 us", "2.82 TB/s", "1 GB/s".
TIMING = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s*(?:ms|us|µs|ns|[KMGT]i?B/s)(?![\w])")

# Figures that are definitions, not results: (file relative to the root, the text the line holds).
# Empty: every figure in a docstring or comment so far was a measurement, now in results/.
DEFINITIONS: set[tuple[str, str]] = set()


def docstrings_and_comments(path: Path):
    """(line, text) of every docstring (module, class, function) and every # comment in the file."""
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    for offset, line in enumerate(body[0].value.value.splitlines()):
                        yield body[0].lineno + offset, line
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string


def timings_in(path: Path, relative: str) -> list[str]:
    found = []
    for line, text in docstrings_and_comments(path):
        for match in TIMING.finditer(text):
            if (relative, text.strip()) not in DEFINITIONS:
                found.append(f"{relative}:{line}: {match.group(0)!r} in {text.strip()!r}")
    return found


def test_no_timings_in_the_products_docstrings_or_comments():
    found = [hit for folder in PRODUCT for path in sorted(folder.rglob("*.py"))
             for hit in timings_in(path, path.relative_to(ROOT).as_posix())]
    assert not found, "a measured figure belongs in results/, cited by path:\n" + "\n".join(found)


def test_the_timing_check_sees_docstrings_and_comments(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Module: 0.7 ms a step."""\n\n\ndef f():\n    """2.82 TB/s; ms/step."""\n    return "9 ms"  # 100 us\n'
    )
    hits = timings_in(sample, "sample.py")
    found = [hit.split(": ")[1] for hit in hits]
    assert found == ["'0.7 ms' in 'Module", "'2.82 TB/s' in '2.82 TB/s; ms/step.'", "'100 us' in '# 100 us'"]
    assert [hit.split(":")[1] for hit in hits] == ["1", "5", "6"]


CITED = re.compile(r"results/[A-Za-z0-9_.\-/]*[A-Za-z0-9_\-/]")


def citing_files():
    yield ROOT / "README.md"
    for folder in ("qbench", "tests", "tools"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in {".py", ".md", ".sh", ".json"}:
                yield path


def test_every_cited_results_path_exists():
    missing = []
    for path in citing_files():
        for cited in set(CITED.findall(path.read_text())):
            target = cited.rstrip("/")
            if target in {"results", "results/qbench.sqlite"} or target.startswith("results/h100/replicate-"):
                continue  # the default store qbench writes; a prefix naming a family of files
            if not (ROOT / target).exists():
                missing.append(f"{path.relative_to(ROOT)} cites {cited}")
    assert not missing, "\n".join(missing)


def test_results_readme_indexes_every_file_kept():
    """Each file under results/ is named in the index, whole or by a pattern (`h100/trust/*`)."""
    index = (ROOT / "results" / "README.md").read_text()
    listed = set(re.findall(r"`([^`\s]+)`", index))
    unlisted = []
    for path in kept_results():
        relative = path.relative_to(ROOT / "results").as_posix()
        if relative != "README.md" and not any(fnmatch.fnmatchcase(relative, pattern) for pattern in listed):
            unlisted.append(relative)
    assert not unlisted, "results/README.md does not list: " + ", ".join(unlisted)



# ---- tools/device: the runner parses, and runs a cell end to end on the CPU ------------------------
DEVICE = ROOT / "tools" / "device"


def test_device_scripts_parse_and_the_runbook_names_only_files_that_exist():
    for script in sorted(DEVICE.glob("*.sh")):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
    runbook = (DEVICE / "README.md").read_text()
    named = set(re.findall(r"tools/device/([\w.-]+\.(?:py|sh))", runbook))
    assert named and all((DEVICE / name).is_file() for name in named), named
    assert not [path.name for path in DEVICE.glob("*.sh") if re.search(r"\d", path.name)]  # no numbered diary


def test_the_runner_installs_a_carried_wheel_runs_a_cell_and_returns_everything_in_out(tmp_path):
    """run.sh setup / compare / export with a qbench wheel carried in .devq, everything under tmp_path
    (DEVICE_TMP), on the CPU: the log, the store and the tables come back in $OUT."""
    repo, out, device = tmp_path / "repo", tmp_path / "out", tmp_path / "device"
    (repo / ".devq").mkdir(parents=True)
    (repo / "tools").symlink_to(ROOT / "tools")
    source = tmp_path / "source"  # the wheel is built from a copy: a build writes nothing into the checkout
    skip = shutil.ignore_patterns(".git", "results", "tests", "build", "*.egg-info", ".dev*", ".*_cache", "__pycache__")
    shutil.copytree(ROOT, source, ignore=skip)
    wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", repo / ".devq"]
    wheel.append(source)
    subprocess.run([str(a) for a in wheel], check=True, capture_output=True)
    env = {**os.environ, "OUT": str(out), "DEVICE_TMP": str(device), "CALL_BEGAN": str(int(time.time()))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"

    def runner(*args, **extra):
        command = ["bash", str(DEVICE / "run.sh"), *args]
        return subprocess.run(command, cwd=repo, env={**env, **extra}, capture_output=True, text=True)

    # a wheel two packs carry (nvidia-ml-py in .whl and .devllama) is installed once; a carried store
    # goes into the device's results folder at setup, for later calls that do not carry it again
    tiny_pkg = tmp_path / "tinypkg"
    (tiny_pkg / "tinypkg_qb").mkdir(parents=True)
    (tiny_pkg / "tinypkg_qb" / "__init__.py").write_text("")
    (tiny_pkg / "setup.cfg").write_text(
        "[metadata]\nname = tinypkg-qb\nversion = 1\n[options]\npackages = tinypkg_qb\n"
    )
    (tiny_pkg / "setup.py").write_text("from setuptools import setup\nsetup()\n")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(repo / ".whl"), str(tiny_pkg)], check=True, capture_output=True)
    shutil.copytree(repo / ".whl", repo / ".devllama")  # the same wheel file in a second pack
    (repo / ".devq" / "db").mkdir()
    (repo / ".devq" / "db" / "carried.sqlite").write_bytes(b"a store")
    done = runner("setup")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 wheels in" in done.stdout and (device / "site" / "tinypkg_qb").is_dir()
    assert (device / "res" / "carried.sqlite").read_bytes() == b"a store"
    cell = ["--model", "tiny", "--ctx", "32", "--warmup", "1", "--steps", "3", "--sessions", "1", "--backends", "bf16"]
    done = runner("compare", *cell, "--graphs", "off", "--db", "t.sqlite")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rc 0 after" in (out / "t.log").read_text() and (out / "t.sqlite").is_file()
    assert (device / "qb" / "qbench").is_dir()  # the carried wheel, installed where DEVICE_TMP says
    assert runner("export", "--db", "t.sqlite").returncode == 0
    assert (out / "t-compare.md").read_text().count("bf16") and (out / "t.json").is_file()
    # too little of the call left: the runner says so and starts nothing
    late = runner("compare", *cell, "--db", "late.sqlite", CALL_LIMIT="60")
    assert late.returncode == 3 and "not starting" in late.stdout and not (out / "late.sqlite").exists()
    # a relative folder never means "here"
    relative = runner("probe", DEVICE_TMP="device")
    assert relative.returncode == 2 and "absolute" in relative.stderr
