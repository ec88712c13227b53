"""The report (python -m lottery_kd.report) on digits studies: tables, protocols, provenance."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from lottery_kd import published as published_lib
from lottery_kd.analysis import curves, report
from lottery_kd.study import lottery, results
from lottery_kd.training.tensorboard import ScalarWriter
from tests.analysis_helpers import _png_size
from tests.conftest import REPO, make_tiny_config


def test_report_tables_equal_the_results_rows_and_plots_are_pngs(studies, tmp_path):
    (first, second), other = studies
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "lottery_kd.report", str(first), str(second),
                           str(other), "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "report.json").read_text())
    assert len(summary["groups"]) == 2  # the 1-epoch study is another protocol: not merged
    group = next(g for g in summary["groups"] if len(g["entries"]) > 2)
    rows = [results.read_rows(d / "results.jsonl") for d in (first, second)]
    for entry in group["entries"]:
        values = [r["test_accuracy"] for rs in rows for r in rs
                  if r["variant"] == entry["variant"] and
                  round(r["sparsity"], 4) == entry["sparsity"]]
        assert entry["n"] == 2 and len(values) == 2
        assert entry["final_mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert entry["final_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        at_best = [r["test_accuracy_at_best_val"] for rs in rows for r in rs
                   if r["variant"] == entry["variant"] and
                   round(r["sparsity"], 4) == entry["sparsity"]]
        assert entry["best_val_mean"] == pytest.approx(np.mean(at_best), abs=1e-12)
        assert entry["best_val_std"] == pytest.approx(np.std(at_best, ddof=1), abs=1e-12)
    text = (out / "report.md").read_text()
    kd_level2 = [r["test_accuracy"] for rs in rows for r in rs
                 if r["variant"] == "kd" and r["level"] == 2]
    cell = f"{100 * np.mean(kd_level2):.2f} ± {100 * np.std(kd_level2, ddof=1):.2f} (n=2)"
    assert cell in text
    kd_level2_best = [r["test_accuracy_at_best_val"] for rs in rows for r in rs
                      if r["variant"] == "kd" and r["level"] == 2]
    best_cell = (f"{100 * np.mean(kd_level2_best):.2f} ± "
                 f"{100 * np.std(kd_level2_best, ddof=1):.2f} (n=2)")
    best_table = text[text.index("at the epoch of best validation"):
                      text.index("at the end of training")]
    assert best_cell in best_table
    assert "| sparsity % | lt | weight_rewind | kd |" in text  # the config's order
    pngs = sorted(out.glob("*.png"))
    assert {p.name.split("_")[0] for p in pngs} >= {"accuracy", "layer", "overlap", "curves"}
    for png in pngs:
        width, height = _png_size(png)
        assert width >= 400 and height >= 300, png.name
    assert "kd@L2" in text and "weight_rewind@L1" in text  # the overlap table


def test_learning_curves_end_at_the_results_rows(studies, tmp_path):
    seeds, _ = studies
    runs = [report.load_run(d) for d in seeds]
    learning = curves.finished_curves(runs)
    rows = [r for run in runs for r in run["rows"]]
    assert {(c["sparsity"], c["variant"]) for c in learning} == \
        {(round(r["sparsity"], 4), r["variant"]) for r in rows}
    for curve in learning:
        finals = [r["test_accuracy"] for r in rows if r["variant"] == curve["variant"]
                  and round(r["sparsity"], 4) == curve["sparsity"]]
        assert curve["n"] == len(finals) == 2
        assert curve["epochs"][-1] == 2.0  # the tiny study trains 2 epochs
        assert curve["test_accuracy_mean"][-1] == pytest.approx(np.mean(finals), abs=1e-6)
        assert curve["test_accuracy_std"][-1] == pytest.approx(np.std(finals, ddof=1), abs=1e-6)
    curves.plot_curves(learning, ["lt", "weight_rewind", "kd"], "tiny", tmp_path / "c.png")
    assert _png_size(tmp_path / "c.png")[0] >= 400


def test_a_seeds_runs_count_once_when_two_workdirs_hold_them(studies):
    """Two workdirs of one seed (e.g. with different variant lists) both hold its dense run:
    the curves, the tables and the compute time count it once."""
    seeds, _ = studies
    run = report.load_run(seeds[0])
    twice = [run, dict(run)]
    assert all(c["n"] == 1 for c in curves.finished_curves(twice))
    assert all(e["n"] == 1 for e in report.aggregate(twice))
    seconds = sum(r["seconds"] for r in run["rows"])
    assert f"Compute: {len(run['rows'])} training run(s), {seconds / 3600:.2f} h" in \
        report.provenance(twice)


def test_protocol_groups_ignore_where_the_data_is_read_but_not_per_device_batch_norm():
    from experiments.configs import default
    config = default.get_config().to_dict()

    def run_with(**changes):
        changed = json.loads(json.dumps(config))
        for dotted, value in changes.items():
            section, key = dotted.split(".")
            changed[section][key] = value
        return {"config": changed}

    base = report.group_key(run_with())
    assert report.group_key(run_with(**{"data.dir": "/elsewhere/cifar10",
                                        "data.source": "local"})) == base
    assert report.group_key(run_with(**{"parallel.num_processes": 4})) == base
    assert report.group_key(run_with(**{"parallel.batch_norm": "per_device"})) != base
    assert report.group_key(run_with(**{"train.epochs": 30})) != base


def test_dynamic_runs_with_and_without_kd_share_a_table_and_are_paired():
    from experiments.configs import default
    config = default.get_config().to_dict()
    config["dynamic"].update(method="rigl", sparsity=0.9)
    distilled = json.loads(json.dumps(config))
    distilled["dynamic"]["distill"] = True
    assert report.group_key({"config": config}) == report.group_key({"config": distilled})
    assert report.undistilled_twin("rigl_kd") == "rigl"
    assert report.undistilled_twin("set_kd_sparse_init") == "set_sparse_init"
    assert report.undistilled_twin("rigl") is None and report.undistilled_twin("lt") is None
    assert report.undistilled_twin("kd_rewind") == "weight_rewind"
    runs = [{"config": {**config, "seed": seed}, "rows": [
        {"variant": "dense", "sparsity": 0.0, "test_accuracy": 0.9},
        {"variant": "rigl", "sparsity": 0.9, "test_accuracy": 0.80 + seed / 100},
        {"variant": "rigl_kd", "sparsity": 0.9, "test_accuracy": 0.83 + seed / 50}]}
        for seed in (0, 1)]
    [difference] = report.paired_differences(runs, "final")
    assert (difference["variant"], difference["baseline"], difference["n"]) == \
        ("rigl_kd", "rigl", 2)
    assert difference["mean"] == pytest.approx(0.035)


def test_read_scalars_later_files_win_and_a_torn_record_ends_a_file(tmp_path):
    first = ScalarWriter(tmp_path)
    first.scalars(1, {"epoch": 1.0, "test_accuracy": 0.5})
    first.scalars(2, {"epoch": 2.0, "test_accuracy": 0.6})  # redone after the resume below
    first.close()
    second = ScalarWriter(tmp_path)  # a resumed run: a new events file
    second.scalars(2, {"epoch": 2.0, "test_accuracy": 0.75})
    second.scalars(3, {"epoch": 3.0, "test_accuracy": 0.875})
    second.close()
    newest = sorted(tmp_path.iterdir(), key=curves._written_at)[-1]
    newest.write_bytes(newest.read_bytes()[:-7])  # a crash in the middle of the last record
    assert curves.read_scalars(tmp_path) == [
        {"step": 1, "epoch": 1.0, "test_accuracy": 0.5},
        {"step": 2, "epoch": 2.0, "test_accuracy": 0.75}]


def test_paired_differences_are_per_seed_differences_of_the_rows(studies, tmp_path):
    seeds, _ = studies
    runs = [report.load_run(d) for d in seeds]
    differences = report.paired_differences(runs, "final")
    assert {(d["variant"], d["baseline"]) for d in differences} == {("kd", "lt"),
                                                                    ("kd", "weight_rewind")}
    rows = {seed: {(r["variant"], round(r["sparsity"], 4)): r["test_accuracy"]
                   for r in results.read_rows(d / "results.jsonl")} for seed, d in enumerate(seeds)}
    for d in differences:
        by_hand = [rows[s][(d["variant"], d["sparsity"])] - rows[s][(d["baseline"], d["sparsity"])]
                   for s in (0, 1)]
        assert d["n"] == 2
        assert d["mean"] == pytest.approx(np.mean(by_hand))
        assert d["std"] == pytest.approx(np.std(by_hand, ddof=1))
    table = report.differences_table(differences)
    first = differences[0]
    assert f"{100 * first['mean']:+.2f} ± {100 * first['std']:.2f} (n=2)" in table
    assert report.undistilled_twin("kd_rewind") == "weight_rewind"
    assert report.undistilled_twin("lt") is None


def test_each_start_records_its_environment_and_the_report_states_it(studies, tmp_path):
    from lottery_kd.runtime.environment import read_starts
    seeds, _ = studies
    starts = read_starts(seeds[0])
    assert len(starts) == 1
    assert {"host", "processor", "cpu_id", "backend", "device", "versions", "code_version",
            "conv_impl", "native_conv_available"} <= set(starts[0])
    assert starts[0]["versions"]["jax"] == jax.__version__
    with (seeds[0] / "environment.jsonl").open("a") as handle:
        handle.write('{"torn": ')  # a kill mid-write leaves a torn last line: skipped
    assert len(read_starts(seeds[0])) == 1
    runs = [report.load_run(d) for d in seeds]
    text = report.provenance(runs)
    hours = sum(r["seconds"] for run in runs for r in run["rows"]) / 3600
    assert f"{len(runs[0]['rows']) + len(runs[1]['rows'])} training run(s), {hours:.2f} h" in text
    assert starts[0]["processor"] in text and "(2 start(s))" in text
    assert starts[0]["cpu_id"] in text


def test_the_cpu_id_tells_apart_cpus_a_vm_names_alike():
    from lottery_kd.runtime.environment import cpu_id
    info = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: {}\nmodel\t\t: {}\n"
            "model name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx {}\nprocessor\t: 1\n"
            "cpu family\t: 99\n")
    assert cpu_id(info.format(23, 49, "avx2")) == "family 23 model 49, avx2"
    assert cpu_id(info.format(25, 1, "avx2 avx512f avx512bw")) == "family 25 model 1, avx512"
    assert cpu_id("") == "family ? model ?, other"


def test_variants_keep_the_configs_order_while_a_level_is_partly_done():
    rows = [{"level": level, "variant": variant, "sparsity": sparsity, "test_accuracy": 0.8,
             "test_accuracy_at_best_val": 0.8}
            for level, sparsity, variants in ((1, 0.59, ("lt", "reinit", "kd")), (2, 0.83, ("lt",)))
            for variant in variants]
    entries = report.aggregate([{"config": {"seed": 0}, "rows": rows, "dir": "study"}])
    assert [(e["variant"], e["sparsity"]) for e in entries] == [
        ("lt", 0.59), ("reinit", 0.59), ("kd", 0.59), ("lt", 0.83)]


def test_report_names_a_directory_that_holds_no_study(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lottery_kd.report", str(tmp_path), "--out",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "config.json is missing" in done.stderr and "Traceback" not in done.stderr


def test_a_study_whose_first_run_is_still_training_is_named_so_with_where_to_follow_it(
        tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(lottery.config_to_dict(make_tiny_config())))
    with pytest.raises(report.ReportError, match="no run has finished yet") as error:
        report.load_run(tmp_path)
    assert f"python -m lottery_kd.status {tmp_path}" in str(error.value)
    assert f"tensorboard --logdir {tmp_path / 'tensorboard'}" in str(error.value)
    (tmp_path / "results.jsonl").write_text("\n")  # created, no row yet: the same, not a blank
    with pytest.raises(report.ReportError, match="no run has finished yet"):
        report.load_run(tmp_path)


def test_runs_that_differ_in_seed_variants_or_oneshot_first_level_share_a_protocol():
    config = lottery.config_to_dict(make_tiny_config())
    config["prune"]["schedule"] = "oneshot"
    other = json.loads(json.dumps(config))
    other["seed"], other["lottery"]["variants"], other["prune"]["first_level"] = 1, "lt", 2
    assert report.group_key({"config": config}) == report.group_key({"config": other})
    other["train"]["epochs"] += 1
    assert report.group_key({"config": config}) != report.group_key({"config": other})


def test_published_numbers_are_drawn_only_where_model_and_data_match():
    reference = published_lib.load(report.REFERENCE)  # carried in the package, always there
    published = report.published_for("resnet20", "cifar10", reference)
    assert published["dense"] == 91.71
    assert (0.8, 91.86) in published["lines"]["lt"]
    assert report.published_for("resnet20", "cifar100", reference) == {}
    assert report.published_for("digits_convnet", "digits", reference) == {}


def test_a_published_density_matches_its_own_level_only():
    """Published densities are rounded (0.107 for 0.8^10); a run deeper than the table must not
    take the nearest published level's number (level 18, 0.0180, is not level 17's 0.0225)."""
    levels = [0.8 ** k for k in range(1, 25)]
    for row in published_lib.load(report.REFERENCE)["iterative"]["resnet56"]:
        matched = [k + 1 for k, d in enumerate(levels)
                   if published_lib.same_density(row["density"], d)]
        assert len(matched) == 1, (row["density"], matched)
    assert not published_lib.same_density(0.0225, 0.8 ** 18)
    assert published_lib.same_density(0.107, 0.8 ** 10)


def test_the_package_reads_nothing_outside_itself_at_run_time():
    """The published tables travel with the package; no module (code or docstring) reads or
    points to ../shared, which a user's clone does not have."""
    from tests.conftest import REPO
    offenders = [str(path.relative_to(REPO)) for path in (REPO / "lottery_kd").rglob("*.py")
                 if "../shared" in path.read_text() or '"shared"' in path.read_text()]
    assert offenders == []
    assert published_lib.load("rigl2020_cifar10_wrn22_2")["wrn22_2_erk"][1]["rigl"] == 93.6


def test_a_study_under_a_users_protocol_reports_in_a_process_that_never_registered_it(
        studies, tmp_path):
    """A protocol registered by the user's experiment module is unknown to `python -m
    lottery_kd.report`: the report names it and says how to compare, instead of a traceback."""
    import shutil
    (first, _), _ = studies
    copy = tmp_path / "study"
    shutil.copytree(first, copy)
    saved = json.loads((copy / "config.json").read_text())
    saved["protocol"] = "my_lab_protocol"
    (copy / "config.json").write_text(json.dumps(saved))
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "lottery_kd.report", str(copy), "--out",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("protocol: my_lab_protocol (not registered in this process: import the module "
            "that registers it" in (out / "report.md").read_text())


def test_a_config_json_of_the_wrong_shape_is_named_not_a_traceback(studies, tmp_path):
    """Valid JSON whose 'train' is null (a hand edit gone wrong): the report names the file and
    the section, as it does for unreadable JSON."""
    import shutil
    (first, _), _ = studies
    copy = tmp_path / "study"
    shutil.copytree(first, copy)
    saved = json.loads((copy / "config.json").read_text())
    saved["train"] = None
    (copy / "config.json").write_text(json.dumps(saved))
    done = subprocess.run([sys.executable, "-m", "lottery_kd.report", str(copy), "--out",
                           str(tmp_path / "report")], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "config.json: train should be section(s) of settings ({...}), not NoneType" in \
        done.stderr


FIFTEEN = REPO / "docs" / "results" / "cpu_resnet20_15ep"
FULL = REPO / "docs" / "results" / "full_length" / "resnet20_renda_seed0"


def _listing(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_report_replaces_the_previous_one_whole_and_an_interrupted_one_changes_nothing(
        tmp_path, monkeypatch, capsys):
    """From the committed studies: a second report into the same --out leaves none of the
    first one's figures (a layer-density plot of other runs under the new text), and one
    interrupted while drawing leaves the previous report as it was, with no scratch folder."""
    out = tmp_path / "report"
    first = report.write_report(sorted(FIFTEEN.glob("resnet20_15ep_seed*")), out, overlap=False)
    assert "layer_sparsity_1_resnet20_cifar10.png" in first["files"]
    assert sorted(_listing(out)) == first["files"]
    dense_only = tmp_path / "dense_only"  # the full-length study as it was before any ticket
    dense_only.mkdir()
    for name in ("config.json", "plan.json"):
        (dense_only / name).write_bytes((FULL / name).read_bytes())
    (dense_only / "results.jsonl").write_text(
        (FULL / "results.jsonl").read_text().splitlines()[0] + "\n")
    second = report.write_report([dense_only], out, overlap=False)
    assert sorted(_listing(out)) == second["files"]
    assert "layer_sparsity_1_resnet20_cifar10.png" not in second["files"]  # no ticket yet
    before = _listing(out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(report, "plot_accuracy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.write_report(sorted(FIFTEEN.glob("resnet20_15ep_seed*")), out, overlap=False)
    assert _listing(out) == before


def test_report_refuses_an_out_in_a_study_an_empty_out_and_a_malformed_reference(
        tmp_path, capsys):
    study = tmp_path / "study"
    study.mkdir()
    for name in ("config.json", "plan.json", "results.jsonl"):
        (study / name).write_bytes((FULL / name).read_bytes())
    (tmp_path / "list.json").write_text("[1, 2]")
    for args, message in (([study, "--out", study], f"is inside the study in {study}"),
                          ([study, "--out", study / "report"], "is inside the study"),
                          ([study, "--out", ""], "--out is empty"),
                          ([study, "--out", tmp_path / "r", "--reference",
                            tmp_path / "list.json"], "not a published-numbers file")):
        assert report.main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in study.iterdir()) == ["config.json", "plan.json",
                                                        "results.jsonl"]
    assert not (tmp_path / "r").exists()  # the reference is read before --out is made


def test_an_interrupted_report_command_says_what_it_left_in_one_line(tmp_path, monkeypatch,
                                                                     capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(report, "write_report", interrupted)
    assert report.main([str(FULL), "--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "unchanged" in err and err.count("\n") == 1


@pytest.mark.parametrize("files", [5, [1, "old.png", None], {"a": 1}, "old.png"])
def test_a_hand_edited_report_json_does_not_stop_the_swap(tmp_path, files):
    """report.json's "files" edited by hand (not a list of names) is read for what names it
    holds; the swap still puts the new report in place."""
    out, staging = tmp_path / "report", tmp_path / "staging"
    out.mkdir()
    staging.mkdir()
    (out / "report.json").write_text(json.dumps({"files": files}))
    (out / "old.png").write_text("old figure")
    (staging / "report.md").write_text("new")
    (staging / "report.json").write_text("{}")
    report._replace_report(out, staging)
    assert (out / "report.md").read_text() == "new"
    assert (out / "report.json").read_text() == "{}"
    assert (out / "old.png").exists() == (files != [1, "old.png", None])


def test_the_provenance_names_the_first_and_last_code_versions_in_time_order():
    """The committed full-length study restarted under many code versions: the report names
    the earliest and the latest start's (not the first and last in alphabetical order)."""
    starts = [json.loads(line) for line in (FULL / "environment.jsonl").read_text().splitlines()]
    starts.sort(key=lambda s: s["time"])
    first, last = starts[0]["code_version"][:12], starts[-1]["code_version"][:12]
    assert sorted({s["code_version"] for s in starts})[0][:12] != first  # the test has teeth
    text = report.provenance([report.load_run(FULL)])
    assert f"the first {first} ({starts[0]['date']}), the last {last}" in text
