"""docs/results.md's full-length section against the committed study it reports on.

The study is carried in git at the end of each sitting (lottery_kd.study.carry); the page is
written by hand beside it. These tests fail when the two drift apart: a finished run the page
does not report, a figure that is not its row's, or a "where it stands" step that is not the
carried resume checkpoint's.
"""

import contextlib
import io
import json
import re
import runpy
import statistics
from pathlib import Path

from lottery_kd.study import results
from lottery_kd.study.variants import snapshot_name
from lottery_kd.study.workdir import Workdir

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "docs" / "results" / "full_length" / "resnet20_renda_seed0"
PAIRED = REPO / "docs" / "results" / "full_length" / "paired"
# a pair's row (| 10 | kd − lt |) or a ticket's (| L10 kd | sparsity | accuracy | row | agrees |)
PAIRED_ROW = r"\| (\d+ \| \w+ − \w+|L\d+ \w+( \| \d+\.\d\d){3} \|)"


def _section() -> str:
    page = (REPO / "docs" / "results.md").read_text()
    start = page.index("## Full length (182 epochs)")
    end = page.find("\n## ", start + 1)
    return page[start:] if end < 0 else page[start:end]


def _rows() -> list[dict]:
    return results.read_rows(str(STUDY / "results.jsonl"))


def test_every_finished_run_is_reported_with_its_rows_accuracy():
    """The dense network's figure, and each ticket's first bold percentage after its bold
    name (`**L10 `lt`**`), are the committed rows' test accuracies to two decimals."""
    section = _section()
    for row in _rows():
        figure = f"**{100 * row['test_accuracy']:.2f} %**"
        if row["level"] == 0:
            assert f"dense network has finished: {figure}" in section
            continue
        name = f"**L{row['level']} `{row['variant']}`**"
        assert name in section, f"{name} finished but the page does not report it"
        after = section[section.index(name):]
        first = re.search(r"\*\*\d+\.\d+ %\*\*", after)
        assert first and first.group(0) == figure, (name, first and first.group(0), figure)


def test_each_tickets_last_ten_epochs_are_the_committed_scalars():
    """"Its last ten epochs ... read A-B % (mean M)": the range and mean of the run's last ten
    test evaluations in the committed TensorBoard events (full_length.py's item 3)."""
    script = runpy.run_path(str(REPO / "docs" / "results" / "full_length.py"))
    rows = {(r["level"], r["variant"]): r for r in _rows()}
    late = script["late_accuracy"](str(STUDY), rows)
    section = _section()
    for (level, variant), values in late.items():
        if level == 0:
            continue
        name = f"**L{level} `{variant}`**"
        paragraph = section[section.index(name):].split("\n- ")[0]
        spread = f"{min(values):.2f}-{max(values):.2f} %"
        mean = f"mean {statistics.mean(values):.2f}"
        assert spread in paragraph and mean in paragraph, (name, spread, mean)


def test_differences_of_ten_epoch_means_come_from_the_unrounded_means():
    """In a ticket's bullet, each figure after "ten-epoch means" (up to the clause's end) is the
    difference of its run's last-ten mean and another run's, from the unrounded means: twice a
    difference of the rounded table means (one hundredth off) had reached the page."""
    script = runpy.run_path(str(REPO / "docs" / "results" / "full_length.py"))
    rows = {(row["level"], row["variant"]): row for row in _rows()}
    means = {key: statistics.mean(values)
             for key, values in script["late_accuracy"](str(STUDY), rows).items()}
    assert len(means) == len(rows), "every finished run has its last ten epochs"
    section, checked = _section(), 0
    for level, variant in (key for key in means if key[0] > 0):
        name = f"**L{level} `{variant}`**"
        paragraph = section[section.index(name):].split("\n- ")[0]
        allowed = {f"{abs(means[level, variant] - mean):.2f}" for mean in means.values()}
        clauses = re.findall(r"ten-epoch means([^).]*(?:\.\d[^).]*)*)", paragraph)
        figures = [f for clause in clauses for f in re.findall(r"\d+\.\d\d", clause)]
        checked += len(figures)
        for figure in figures:
            assert figure in allowed, (name, figure, sorted(allowed))
    assert checked, "the bullets give differences of ten-epoch means"


def test_where_it_stands_names_the_carried_resume_checkpoint():
    """"Next, L10 `lr_rewind`: step N of M": the run the committed copy resumes, at the step of
    its carried resume checkpoint, and M the run's last step from plan.json."""
    found = re.search(r"Next, L(\d+) `(\w+)`: step (\d+) of (\d+)", _section())
    assert found, "the section says where the study stands"
    level, variant, step, last = int(found[1]), found[2], int(found[3]), int(found[4])
    done = {(r["level"], r["variant"]) for r in _rows()}
    plan = json.loads((STUDY / "plan.json").read_text())
    unfinished = [r for r in plan["runs"] if (r["level"], r["variant"]) not in done]
    assert (unfinished[0]["level"], unfinished[0]["variant"]) == (level, variant)
    assert last == unfinished[0]["start_step"] + unfinished[0]["steps"]
    carried = Workdir(STUDY).resume(snapshot_name(level, variant))
    steps = sorted(int(p.name) for p in carried.iterdir() if p.name.isdigit()) \
        if carried.is_dir() else []
    assert (steps[-1] if steps else unfinished[0]["start_step"]) == step, (steps, step)


def test_the_readmes_results_summary_quotes_the_committed_rows():
    """README's "Results" section names every finished full-length run's accuracy in bold, and
    no bold figure there that is not a row's."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Results\n")
    summary = readme[start:readme.index("\n## ", start + 1)]
    figures = {f"**{100 * row['test_accuracy']:.2f} %**" for row in _rows()}
    quoted = set(re.findall(r"\*\*\d+\.\d+ %\*\*", summary))
    assert quoted == figures, (sorted(quoted), sorted(figures))


def test_the_sections_tables_are_full_length_pys_output():
    """Every table row the section copies from `python docs/results/full_length.py STUDY` (the
    accuracy and difference rows, one per density; the per-run rows of the last-ten-epoch,
    epoch-time and wall-time tables; the per-layer rows) is a line the script prints from the
    committed study now: a run that finishes changes its row, and the page must follow."""
    script = runpy.run_path(str(REPO / "docs" / "results" / "full_length.py"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        script["main"]([str(STUDY)])
    lines = set(printed.getvalue().splitlines())
    copied = [line for line in _section().splitlines()
              if re.match(r"\| (0\.\d{4}|L\d+ \w+|stem_conv|stage\d_block\d/conv\d) \|", line)
              and not re.match(PAIRED_ROW, line)]  # lottery_kd.paired's, tested below
    assert len(copied) >= 8, copied  # two accuracy rows, four difference rows, two runs at least
    missing = [line for line in copied if line not in lines]
    assert not missing, missing


def test_the_paired_tests_cover_every_finished_ticket_and_the_page_copies_them():
    """docs/results/full_length/paired (`python -m lottery_kd.paired STUDY --out ...`) holds
    every finished ticket of each level with two or more, at its row's accuracy (a run that
    finishes means rerunning the command), and every paired-test or ticket row the section
    shows is a line of its paired.md."""
    record = json.loads((PAIRED / "paired.json").read_text())
    rows = {(r["level"], r["variant"]): r for r in _rows()}
    tested = {(t["level"], t["variant"]): t for t in record["tickets"]}
    levels = [r["level"] for r in rows.values() if r["level"] > 0]
    wanted = {key for key in rows if key[0] == 0 or levels.count(key[0]) > 1}
    assert set(tested) == wanted, (sorted(tested), sorted(wanted))
    for key, ticket in tested.items():
        assert abs(ticket["test_accuracy"] - rows[key]["test_accuracy"]) < 5e-5, key
    lines = set((PAIRED / "paired.md").read_text().splitlines())
    copied = [line for line in _section().splitlines() if re.match(PAIRED_ROW, line)]
    assert len(copied) >= 10, copied
    missing = [line for line in copied if line not in lines]
    assert not missing, missing


def test_every_p_value_and_interval_the_page_and_readme_quote_is_a_pairs():
    """Each "p = X", Holm-adjusted p and "interval A to B" in the section and in README's Results
    and paired paragraphs is, to the digits it is written with, a pair's in the committed
    paired.json: a rerun of `lottery_kd.paired` that changes one leaves no stale figure in the
    prose."""
    record = json.loads((PAIRED / "paired.json").read_text())
    values = [p["p_value"] for p in record["pairs"]]
    readme = (REPO / "README.md").read_text()
    results_part = readme[readme.index("## Results\n"):]
    results_part = results_part[:results_part.index("\n## ", 1)]
    paired_part = readme[readme.index("Is a gap between two tickets a finding"):]
    paired_part = paired_part[:paired_part.index("\n\n")]
    quoted = []
    for text in (_section(), results_part, paired_part):
        quoted += re.findall(r"p(?: =|\s*≤)\s*(\d+(?:\.\d+)?(?:e-\d+)?)", " ".join(text.split()))
    assert len(quoted) >= 10, quoted
    for text in quoted:
        assert any(_written_as(text, v) for v in values), (text, values)
    # Holm-adjusted values ("adjusted p X", "X once Holm-adjusted") and intervals ("interval
    # A to B", in points) are a pair's too
    holm = [p["p_holm"] for p in record["pairs"]]
    intervals = [[100 * x for x in p["ci95"]] for p in record["pairs"]]
    for text in (_section(), results_part, paired_part):
        flat = " ".join(text.split()).replace("−", "-")
        for value in re.findall(r"adjusted p (\d\.\d+)|(\d\.\d+) once Holm-adjusted", flat):
            value = value[0] or value[1]
            assert any(_written_as(value, v) for v in holm), (value, holm)
        for low, high in re.findall(r"interval ([-+]\d+\.\d+) to ([-+]\d+\.\d+)", flat):
            assert any(_written_as(low, a) and _written_as(high, b) for a, b in intervals), (
                low, high, intervals)


def _written_as(text: str, value: float) -> bool:
    """Whether `value` rounds to `text` ("0.053", "7.8e-07", "+0.72") at the digits written."""
    mantissa = text.lstrip("+").split("e")[0]
    digits = len(mantissa.split(".")[1]) if "." in mantissa else 0
    scale = 10 ** int(text.split("e")[1]) if "e" in text else 1
    return abs(value - float(text)) <= 0.5 * 10 ** -digits * scale * (1 + 1e-9)


def test_the_15_epoch_discussions_full_length_row_is_the_committed_rows():
    """"What the shortened schedule changes" sets the full-length study's 83.22 % cells (ticket
    minus dense, points) beside the 15-epoch ones: each is its committed row's difference, or
    `training`/`pending` while the row is still to come."""
    page = (REPO / "docs" / "results.md").read_text()
    line = next(x for x in page.splitlines() if x.startswith("| full-length study, 182 epochs |"))
    cells = [c.strip() for c in line.strip("|").split("|")[1:]]
    rows = {(r["level"], r["variant"]): 100 * r["test_accuracy"] for r in _rows()}
    for variant, cell in zip(("lt", "weight_rewind", "lr_rewind"), cells, strict=True):
        if (8, variant) not in rows:
            assert cell in ("training", "pending"), (variant, cell)
            continue
        difference = f"{rows[(8, variant)] - rows[(0, 'dense')]:+.2f}".replace("-", "−")
        assert cell == difference, (variant, cell, difference)
