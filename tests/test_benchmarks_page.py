"""docs/benchmarks.md against benchmarks/results/: the page is the log of every measurement, so
each result file it names exists and each committed result file is named on it (a file's name
in backticks, with or without its folder, a `{a,b}` list or a `*` pattern)."""

import fnmatch
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _expand(name: str) -> list[str]:
    """`x{_a,}_y.json` -> [x_a_y.json, x_y.json]; other names as they are."""
    found = re.search(r"\{([^}]*)\}", name)
    if not found:
        return [name]
    head, tail = name[:found.start()], name[found.end():]
    return [n for part in found[1].split(",") for n in _expand(head + part + tail)]


def _cited() -> list[str]:
    page = (REPO / "docs" / "benchmarks.md").read_text()
    names = re.findall(r"`(?:benchmarks/results/)?([\w.{},*-]+\.json)`", page)
    return [pattern for name in names for pattern in _expand(name)]


def test_every_result_file_the_page_names_exists():
    files = [p.name for p in RESULTS.glob("*.json")]
    missing = [p for p in _cited() if not fnmatch.filter(files, p)]
    assert not missing, f"docs/benchmarks.md names result files that do not exist: {missing}"


def test_every_committed_result_file_is_on_the_page():
    cited = _cited()
    assert len(cited) > 40, "the page's file names were not found"
    unnamed = [p.name for p in sorted(RESULTS.glob("*.json"))
               if not any(fnmatch.fnmatch(p.name, pattern) for pattern in cited)]
    assert not unnamed, f"result files docs/benchmarks.md does not name: {unnamed}"
