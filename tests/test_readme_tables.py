"""The README's tables of shrunk studies come from committed rows: docs/results/quickstart_table.py
and structured_table.py print them again."""

import json
import runpy
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docs" / "results" / "quickstart_table.py"
COMMITTED = REPO / "docs" / "results" / "quickstart"


def _main():
    return runpy.run_path(str(SCRIPT), run_name="not_main")["main"]


def _accuracy(study: str, sparsity: float, variant: str) -> float:
    rows = [json.loads(line) for line in (COMMITTED / study / "results.jsonl").open()]
    return next(100 * r["test_accuracy"] for r in rows
                if r["variant"] == variant and round(100 * r["sparsity"], 2) == sparsity)


def test_the_readme_quotes_the_tables_the_committed_rows_give(capsys):
    _main()([str(COMMITTED)])
    out = capsys.readouterr().out
    readme = (REPO / "README.md").read_text()
    table_lines = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table_lines) == 4 + 6  # two sparsities; header, rule and four rows
    assert all(line in readme for line in table_lines), "README's quickstart tables are stale"
    assert (f"| 99.22 | {_accuracy('seed0', 99.22, 'lt'):.1f} / "
            f"{_accuracy('seed1', 99.22, 'lt'):.1f} |") in out
    bf16 = next(line for line in table_lines if line.startswith("| bfloat16 "))
    assert f"| {_accuracy('bf16_seed0', 98.44, 'kd'):.1f} |" in bf16


def test_a_missing_or_mislabelled_study_is_named(tmp_path):
    with pytest.raises(SystemExit, match="has no results.jsonl"):
        _main()([str(tmp_path)])
    for name in ("seed0", "seed1", "bf16_seed0"):
        shutil.copytree(COMMITTED / "seed0", tmp_path / name)  # bf16_seed0 holds float32 rows
    with pytest.raises(SystemExit, match="trained in float32, its name says bfloat16"):
        _main()([str(tmp_path)])


def test_the_readme_quotes_the_structured_table_the_committed_rows_give(capsys):
    script = REPO / "docs" / "results" / "structured_table.py"
    runpy.run_path(str(script), run_name="not_main")["main"](
        str(REPO / "docs" / "results" / "structured_shrunk"))
    out = capsys.readouterr().out
    table_lines = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table_lines) == 7 and "not run" not in out
    readme = (REPO / "README.md").read_text()
    assert all(line in readme for line in table_lines), "README's structured table is stale"
