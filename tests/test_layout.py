"""The repository's layout keeps its promises (issue 22, item 6): results live in results/, not in the
product's docstrings and comments; every path the code, the tests and the READMEs cite under results/
exists; and results/README.md indexes every file kept there."""

import ast
import fnmatch
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = [ROOT / "qbench", ROOT / "backends"]

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
    for folder in ("qbench", "backends", "tests", "tools"):
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
    for path in sorted((ROOT / "results").rglob("*")):
        relative = path.relative_to(ROOT / "results").as_posix()
        if path.is_file() and relative != "README.md":
            if not any(fnmatch.fnmatchcase(relative, pattern) for pattern in listed):
                unlisted.append(relative)
    assert not unlisted, "results/README.md does not list: " + ", ".join(unlisted)
