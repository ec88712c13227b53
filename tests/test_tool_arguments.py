"""The analysis tools (lmc, bootstrap) and the tfds preparation check every argument before they
write or train anything, and say what is wrong in a line or two with exit code 2."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from lottery_kd.analysis import bootstrap, lmc

from lottery_kd.study import lottery
from lottery_kd.data import prepare
from lottery_kd.training.trainer import Trainer
from tests.conftest import REPO, make_tiny_config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished digits study: dense (the teacher) and one level of `lt` (level_1_lt)."""
    config = make_tiny_config()
    config.prune.levels = 1
    config.lottery.variants = "lt"
    workdir = tmp_path_factory.mktemp("tools") / "study"
    lottery.run(config, workdir, log=lambda *_: None)
    return workdir


@pytest.fixture
def no_training(monkeypatch):
    """Any training fails the test: a bad argument must be refused before training."""
    def fit(*args, **kwargs):
        raise AssertionError("trained although an argument is bad")
    monkeypatch.setattr(Trainer, "fit", fit)


def _refused(main, argv, capsys, *expected):
    """main(argv) exits 2 with one `error:` message containing every `expected` text."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("error: ") == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


def _fake_lmc_result(self, rewind_step, out, points=11):
    alphas = [i / (points - 1) for i in range(points)]
    return {"rewind_step": rewind_step, "rewind_epoch": 0.0, "alphas": alphas,
            "test_error": [0.1] * points, "test_loss": [1.0] * points, "barrier": 0.0,
            "endpoint_errors": [0.1, 0.1], "sparsity": 0.0}


def _fake_comparison(self, *, ticket, distill, steps, eval_every, out):
    point = {"step": steps, "test_error": 0.5, "train_error": 0.5, "train_loss": 1.0}
    return {"tag": (ticket or "dense") + ("_kd" if distill else ""), "ticket": ticket,
            "distill": distill, "sparsity": 0.0, "steps": [steps], "real": [point],
            "ideal": [point], "gap": [0.0]}


# --------------------------------------------------------------------------------------------
# lmc


@pytest.mark.parametrize("rewind, message", [
    ("999ep", "--rewind 999ep is step"), ("0it,1xx", "'1xx' is not a step count"),
    ("0it,38it", "outside this study's training"), (",", "--rewind names no point")])
def test_lmc_refuses_bad_rewind_points_before_writing_or_training(study, tmp_path, capsys,
                                                                  no_training, rewind,
                                                                  message):
    out = tmp_path / "lmc"
    _refused(lmc.main, [study, "--rewind", rewind, "--out", out], capsys, message)
    assert not out.exists()


def test_lmc_refuses_a_missing_ticket_or_teacher_before_writing(study, tmp_path, capsys,
                                                                no_training):
    out = tmp_path / "lmc"
    _refused(lmc.main, [study, "--ticket", "level_9_kd", "--out", out], capsys,
             "--ticket 'level_9_kd': no such snapshot", "level_1_lt")
    assert not out.exists()
    untaught = tmp_path / "untaught"
    shutil.copytree(study, untaught)
    shutil.rmtree(untaught / "checkpoints" / "snapshots" / "level_0_dense")
    _refused(lmc.main, [untaught, "--distill", "--out", out], capsys,
             "--distill needs the study's dense teacher (level_0_dense)")
    assert not out.exists()


def test_lmc_settings_without_results_do_not_block_a_corrected_command(study, tmp_path,
                                                                       monkeypatch, capsys):
    """What an earlier refused command left (settings, no result, no checkpoint) is replaced;
    the new settings hold the folder from then on."""
    out = tmp_path / "lmc"
    out.mkdir()
    stale = {"settings": {"run_dir": str(study.resolve()), "ticket": "", "distill": False,
                          "points": 11}, "results": []}
    (out / "lmc.json").write_text(json.dumps(stale))
    (out / "tensorboard" / "k0_copy1").mkdir(parents=True)
    monkeypatch.setattr(lmc.LinearModeConnectivity, "measure", _fake_lmc_result)
    assert lmc.main([str(study), "--rewind", "0it", "--points", "3", "--out", str(out)]) == 0
    saved = json.loads((out / "lmc.json").read_text())
    assert saved["settings"]["points"] == 3 and len(saved["results"]) == 1
    assert not (out / "tensorboard").exists()  # the replaced settings' leftovers
    capsys.readouterr()
    _refused(lmc.main, [study, "--rewind", "0it", "--points", "5", "--out", out], capsys,
             "holds 1 result(s) with other settings")


@pytest.mark.parametrize("tool, name, what, fake", [
    ("lmc", "lmc.json", "results", _fake_lmc_result),
    ("bootstrap", "bootstrap.json", "comparisons", _fake_comparison)])
def test_a_record_with_a_damaged_item_is_named_not_a_key_error(study, tmp_path, capsys,
                                                               no_training, tool, name, what,
                                                               fake):
    """A hand-edited record whose item lacks a field the tool reads is refused by file, item and
    field before anything trains, and left as it is."""
    out = tmp_path / tool
    out.mkdir()
    item = fake(None, 0, out, 3) if tool == "lmc" else fake(
        None, ticket="", distill=False, steps=1, eval_every=1, out=out)
    dropped = "rewind_step" if tool == "lmc" else "tag"
    del item[dropped]
    settings = {"run_dir": str(study.resolve()), "ticket": "", "distill": False,
                "points": 11} if tool == "lmc" else {}  # lmc: this command's own settings
    (out / name).write_text(json.dumps({"settings": settings, what: [item]}))
    before = (out / name).read_text()
    main = lmc.main if tool == "lmc" else bootstrap.main
    argv = [study, "--out", out] + (["--real-size", "300"] if tool == "bootstrap" else [])
    _refused(main, argv, capsys, f"{name} is damaged", f"item 0 of its '{what}'",
             f"lacks '{dropped}'")
    assert (out / name).read_text() == before


def test_lmc_out_with_an_interrupted_run_of_other_settings_is_refused(study, tmp_path, capsys,
                                                                      no_training):
    out = tmp_path / "lmc"
    (out / "checkpoints" / "k0_copy1" / "19").mkdir(parents=True)
    (out / "checkpoints" / "k0_copy1" / "19" / "state").write_text("a checkpoint")
    (out / "lmc.json").write_text(json.dumps({"settings": {
        "run_dir": str(study.resolve()), "ticket": "", "distill": True, "points": 11},
        "results": []}))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    _refused(lmc.main, [study, "--rewind", "0it", "--out", out], capsys,
             "an interrupted run's checkpoints with other settings")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_lmc_refuses_an_unusable_out_before_writing(study, tmp_path, capsys, no_training):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    _refused(lmc.main, [study, "--out", a_file], capsys, f"--out {a_file} is a file")
    _refused(lmc.main, [study, "--out", a_file / "lmc"], capsys, "cannot be created")
    snapshots = sorted((study / "checkpoints" / "snapshots").iterdir())
    _refused(lmc.main, [study, "--out", study], capsys, "is inside the study")
    _refused(lmc.main, [study, "--out", ""], capsys, "--out is empty")
    assert sorted((study / "checkpoints" / "snapshots").iterdir()) == snapshots
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "lmc.json").write_text('{"settings": ')
    _refused(lmc.main, [study, "--out", broken], capsys, "lmc.json cannot be read")
    assert (broken / "lmc.json").read_text() == '{"settings": '
    assert a_file.read_text() == "not a folder"


def _not_studies(root, study):
    """Folders and files that are no study, each with a word of the expected message."""
    (root / "a_file").write_text("x")
    (root / "empty").mkdir()
    truncated = root / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((study / "config.json").read_text()[:100])
    listed = root / "listed"
    listed.mkdir()
    (listed / "config.json").write_text("[1, 2]")
    folder = root / "folder"
    (folder / "config.json").mkdir(parents=True)
    mangled = root / "mangled"
    mangled.mkdir()
    config = json.loads((study / "config.json").read_text())
    config["train"] = "fast"
    (mangled / "config.json").write_text(json.dumps(config))
    return [(root / "missing", "no such folder"), (root / "a_file", "is a file, not a study"),
            (root / "empty", "holds no study"), (truncated, "cannot be read"),
            (listed, "holds no config object"), (folder, "holds no study"),
            (mangled, "train should be section(s) of settings ({...}), not str")]


def test_a_workdir_that_is_not_a_study_is_one_line_and_exit_2(study, tmp_path, capsys,
                                                               no_training):
    out = tmp_path / "out"
    for run_dir, message in _not_studies(tmp_path, study):
        err = _refused(lmc.main, [run_dir, "--out", out], capsys, str(run_dir), message)
        assert len(err.strip().splitlines()) == 1
        err = _refused(bootstrap.main, [run_dir, "--real-size", 300, "--out", out], capsys,
                       str(run_dir), message)
        assert len(err.strip().splitlines()) == 1
        assert not out.exists()


def test_lmc_command_line_exit_code_and_no_traceback(study, tmp_path):
    out = tmp_path / "lmc"
    done = subprocess.run([sys.executable, "-m", "lottery_kd.lmc", str(study), "--rewind",
                           "999ep", "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: --rewind 999ep") and "Traceback" not in done.stderr
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Deep Bootstrap


@pytest.mark.parametrize("arguments, message", [
    (["--ticket", "level_1_lt,level_9_kd"], "--ticket 'level_9_kd': no such snapshot"),
    (["--real-size", "5000"], "--real-size must be in (0, 1257)"),
    (["--real-size", "1250"], "less than one batch"),
    (["--real-size", "10"], "--real-size 10 is less than one batch of 64"),
    (["--steps", "-1"], "--steps must be >= 0"),
    (["--eval-every", "0"], "--eval-every must be >= 1")])
def test_bootstrap_refuses_bad_arguments_before_writing_or_training(study, tmp_path, capsys,
                                                                    no_training, arguments,
                                                                    message):
    out = tmp_path / "boot"
    argv = [study, "--real-size", 300, "--out", out]
    _refused(bootstrap.main, argv + arguments, capsys, message)
    assert not out.exists()


def test_bootstrap_kd_needs_the_teacher_and_out_must_be_a_folder(study, tmp_path, capsys,
                                                                 no_training):
    out = tmp_path / "boot"
    untaught = tmp_path / "untaught"
    shutil.copytree(study, untaught)
    shutil.rmtree(untaught / "checkpoints" / "snapshots" / "level_0_dense")
    _refused(bootstrap.main, [untaught, "--real-size", 300, "--ticket", "level_1_lt", "--kd",
                              "on", "--out", out], capsys, "needs the study's dense teacher")
    assert not out.exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    _refused(bootstrap.main, [study, "--real-size", 300, "--out", a_file], capsys,
             f"--out {a_file} is a file")
    _refused(bootstrap.main, [study, "--real-size", 300, "--out", study], capsys,
             "is inside the study")
    _refused(bootstrap.main, [study, "--real-size", 300, "--out", study / "boot"], capsys,
             "is inside the study")
    _refused(bootstrap.main, [study, "--real-size", 300, "--out", ""], capsys,
             "--out is empty")


def test_bootstrap_settings_without_results_do_not_block_a_corrected_command(
        study, tmp_path, monkeypatch, capsys):
    out = tmp_path / "boot"
    out.mkdir()
    stale = {"settings": {"run_dir": str(study.resolve()), "real_size": 200, "steps": 16,
                          "eval_every": 50}, "comparisons": []}
    (out / "bootstrap.json").write_text(json.dumps(stale))
    pairs = []

    def compare(self, **kwargs):
        pairs.append((kwargs["ticket"], kwargs["distill"]))
        return _fake_comparison(self, **kwargs)

    monkeypatch.setattr(bootstrap.DeepBootstrap, "compare", compare)
    assert bootstrap.main([str(study), "--real-size", "300", "--ticket", "level_1_lt",
                           "--kd", "both", "--out", str(out)]) == 0
    assert pairs == [("", False), ("level_1_lt", False), ("level_1_lt", True)]
    saved = json.loads((out / "bootstrap.json").read_text())
    assert saved["settings"]["real_size"] == 300
    assert [c["tag"] for c in saved["comparisons"]] == ["dense", "level_1_lt", "level_1_lt_kd"]
    capsys.readouterr()
    _refused(bootstrap.main, [study, "--real-size", 200, "--out", out], capsys,
             "holds 3 result(s) with other settings")


# --------------------------------------------------------------------------------------------
# python -m lottery_kd.data.prepare


def _fake_cifar100(folder):
    """A folder with CIFAR-100's file names and exact sizes (sparse: no checksums are carried
    for CIFAR-100, so it passes the --from check)."""
    folder.mkdir()
    for name, records in (("train.bin", 50000), ("test.bin", 10000)):
        with open(folder / name, "wb") as handle:
            handle.truncate(records * 3074)
    for name in ("coarse_label_names.txt", "fine_label_names.txt"):  # tfds's builder reads them
        (folder / name).write_text("a\n")
    return folder


def test_prepare_names_from_for_a_wrong_from(tmp_path, capsys):
    a_file = tmp_path / "cifar-10-binary.tar.gz"
    a_file.write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    short = tmp_path / "short"
    short.mkdir()
    (short / "test_batch.bin").write_bytes(b"x" * 10)
    data_dir = tmp_path / "tfds"
    for local, expected in ((tmp_path / "missing", "no such folder"),
                            (a_file, "is a file, not a folder (unpack it first"),
                            (tmp_path / "empty", "missing (7): data_batch_1.bin"),
                            (short, "test_batch.bin has 10 bytes")):
        err = _refused(prepare.main, ["cifar10", "--from", local, "--data-dir", data_dir],
                       capsys, f"--from {local}", expected, "cifar-10-batches-bin")
        assert "data.dir" not in err and "--config" not in err
        assert not data_dir.exists()


def test_prepare_names_data_dir_when_it_cannot_be_written(tmp_path, capsys):
    local = _fake_cifar100(tmp_path / "cifar-100-binary")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    _refused(prepare.main, ["cifar100", "--from", local, "--data-dir", a_file], capsys,
             f"--data-dir {a_file} is a file")
    _refused(prepare.main, ["cifar100", "--from", local, "--data-dir", a_file / "tfds"],
             capsys, f"--data-dir {a_file / 'tfds'} cannot be written")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _refused(prepare.main, ["cifar100", "--from", local, "--data-dir", locked / "tfds"],
                 capsys, "cannot be written")


def test_the_training_path_still_names_the_config_key(tmp_path):
    from lottery_kd.data import DataError, load_dataset
    with pytest.raises(DataError, match=r"data\.dir"):
        load_dataset("cifar10", source="local", directory=str(tmp_path))


def test_a_sweep_measures_only_the_missing_items_once_each_and_writes_after_every_one(tmp_path):
    from lottery_kd.analysis.sweep import measure_missing
    out = tmp_path / "out"
    saved = {"settings": {"a": 1}, "results": [{"step": 2, "value": 20}]}
    measured = []

    def measure(step):
        measured.append(step)
        on_disk = json.loads((out / "r.json").read_text())["results"]
        assert [r["step"] for r in on_disk] == [2] + measured[:-1]  # the file trails by one
        return {"step": step, "value": 10 * step}

    rows = measure_missing(out, "r.json", saved, "results", [1, 2, 3, 1], key=lambda s: s,
                           record_key=lambda r: r["step"], measure=measure)
    assert measured == [1, 3]
    assert [r["step"] for r in rows] == [2, 1, 3]
    assert json.loads((out / "r.json").read_text()) == saved
    untouched = tmp_path / "untouched"
    measure_missing(untouched, "r.json", saved, "results", [1, 2], key=lambda s: s,
                    record_key=lambda r: r["step"], measure=measure)
    assert not untouched.exists()  # nothing to measure: --out is not even created


def test_a_second_sweep_into_a_busy_out_is_refused_and_one_that_ended_is_read_back(tmp_path):
    """Two lmc / bootstrap commands on one --out: the second is refused while the first runs,
    and a sweep that checked --out before the first one finished keeps the first one's rows."""
    from lottery_kd.analysis.sweep import measure_missing
    from lottery_kd.study.workdir_lock import WorkdirLock
    out = tmp_path / "out"
    saved = {"settings": {"a": 1}, "results": []}
    kwargs = dict(key=lambda s: s, record_key=lambda r: r["step"],
                  measure=lambda s: {"step": s, "by": "second"})
    with WorkdirLock(out):
        with pytest.raises(ValueError, match=r"--out .*another process \(pid \d+"):
            measure_missing(out, "r.json", saved, "results", [1], **kwargs)
    assert saved["results"] == [] and not (out / "r.json").exists()
    # The first sweep finished step 1 after the second had read an empty record.
    (out / "r.json").write_text(json.dumps({"settings": {"a": 1},
                                            "results": [{"step": 1, "by": "first"}]}))
    rows = measure_missing(out, "r.json", saved, "results", [1, 2], **kwargs)
    assert rows == [{"step": 1, "by": "first"}, {"step": 2, "by": "second"}]


@pytest.mark.parametrize("module,argv,message", [
    ("pruning", ["--repeats", "0"], "--repeats 0: at least 1"),
    ("pruning", ["--fraction", "2"], "--fraction 2.0: a number in (0, 1)"),
    ("conv3x3", ["--repeats", "0"], "--repeats 0: at least 1"),
    ("step_fingerprint", ["--model", "bogus"], "--model(s) bogus: unknown"),
    ("step_fingerprint", ["--sparsity", "2"], "--sparsity 2.0: a number in [0, 1)"),
    ("train_step", ["--models", "resnet20,bogus"], "--model(s) bogus: unknown"),
    ("tile_loop", ["--out", "{file}/x.json"], "cannot be created"),
    ("vgg_small_map", ["--out", "{dir}"], "is a folder; give a file path"),
    ("input_pipeline", ["--cifar-dir", "{dir}/missing"], "no such folder"),
])
def test_a_benchmark_refuses_a_bad_option_in_one_line_before_any_compute(
        module, argv, message, tmp_path, capsys):
    """Each of these used to end in a traceback, some after minutes of timing (a bad --out only
    when the results were written), or, for --cifar-dir, to measure synthetic data instead."""
    import importlib
    (tmp_path / "file").write_text("x")
    argv = [a.format(file=tmp_path / "file", dir=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(f"benchmarks.{module}").main(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_a_benchmark_report_records_its_options_and_is_written_whole(tmp_path):
    import argparse
    from benchmarks.common import write_json
    out = tmp_path / "r.json"
    out.write_text("the previous report")
    write_json({"benchmark": "x"}, str(out), argparse.Namespace(steps=3, note="", out=str(out),
                                                                 callback=print))
    assert json.loads(out.read_text()) == {"benchmark": "x", "options": {
        "steps": 3, "note": "", "out": str(out)}}  # a function is no setting to record
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_benchmark_failing_midway_keeps_what_it_measured_beside_the_previous_report(
        tmp_path, monkeypatch):
    """train_step measures each model in a child process: when the second fails, the first's
    records stay in OUT.partial (marked incomplete) and the previous OUT is untouched; a run that
    completes replaces OUT and removes the partial file."""
    import subprocess
    import types
    from benchmarks import train_step
    out = tmp_path / "r.json"
    out.write_text("the previous report")

    run = subprocess.run

    def child(command, **kwargs):
        if "--child" not in command:  # the environment record's own commands
            return run(command, **kwargs)
        model = command[command.index("--child") + 1]
        row = [{"model": model, "variant": "dense", "images_per_sec": 1.0}]
        return types.SimpleNamespace(returncode=1 if model == "resnet32" and failing else 0,
                                     stdout=json.dumps(row) + "\n", stderr="boom")

    monkeypatch.setattr(subprocess, "run", child)
    failing = True
    with pytest.raises(SystemExit, match="resnet32 failed"):
        train_step.main(["--models", "resnet20,resnet32", "--out", str(out)])
    assert out.read_text() == "the previous report"
    kept = json.loads((tmp_path / "r.json.partial").read_text())
    assert kept["complete"] is False and [r["model"] for r in kept["records"]] == ["resnet20"]
    failing = False
    train_step.main(["--models", "resnet20,resnet32", "--out", str(out)])
    assert [r["model"] for r in json.loads(out.read_text())["records"]] == ["resnet20", "resnet32"]
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
