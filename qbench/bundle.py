"""`qbench bundle`: download what chosen backends need, for an offline GPU host, into one folder.

GPU hosts are often offline. On a machine with PyPI access this fetches wheels for the host's
Python and platform; the host then installs with `pip install --no-index --find-links DIR ...`.
torch is left out on purpose: a GPU host keeps the torch build that matches its CUDA driver.
A requirement published only as a source distribution is fetched as such, without its
dependencies; the command says which ones so that they can be added by name.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BASE_REQUIREMENTS = ("transformers>=5.0,<6", "safetensors", "click>=8", "tabulate>=0.9", "scipy>=1.11", "nvidia-ml-py")


def platform_flags(python: str, platforms: list[str]) -> list[str]:
    flags = ["--python-version", python, "--implementation", "cp"]
    for platform in platforms:
        flags += ["--platform", platform]
    return flags


def pip_commands(requirements: list[str], directory: Path, python: str, platforms: list[str]) -> list[list[str]]:
    """One `pip download` per requirement: wheels with their dependencies for the target platform."""
    base = [sys.executable, "-m", "pip", "download", "--dest", str(directory), "--only-binary=:all:"]
    return [base + platform_flags(python, platforms) + [requirement] for requirement in requirements]


def sdist_fallback(command: list[str]) -> list[str]:
    """The same download without dependencies, source distributions allowed."""
    return [part for part in command if part != "--only-binary=:all:"] + ["--no-deps"]


def requirements_for(backends: list[str]) -> list[str]:
    from qbench.registry import load_backend

    wanted = list(BASE_REQUIREMENTS)
    for name in backends:
        wanted += list(load_backend(name).packages.values())
    return list(dict.fromkeys(wanted))


def bundle(backends: list[str], directory: Path, python: str, platforms: list[str], echo=print) -> list[str]:
    """Download everything; returns the requirements that came only as sdists without dependencies."""
    directory.mkdir(parents=True, exist_ok=True)
    sdist_only = []
    for command in pip_commands(requirements_for(backends), directory, python, platforms):
        requirement = command[-1]
        echo(f"downloading {requirement} ...")
        if subprocess.run(command, capture_output=True, text=True).returncode == 0:
            continue
        fallback = subprocess.run(sdist_fallback(command), capture_output=True, text=True)
        if fallback.returncode != 0:
            tail = (fallback.stderr.strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"could not download {requirement}: {tail}")
        sdist_only.append(requirement)
    return sdist_only
