"""analysis.status: done / current / pending runs and a time estimate, from files only."""

import json
import os
import statistics
import subprocess
import sys

import pytest

from lottery_kd.study import lottery, results
from lottery_kd.study.workdir import Workdir

from lottery_kd.analysis import status, status_pace
from lottery_kd.training.errors import TrainingInterrupted
from tests.conftest import REPO, make_tiny_config
from tests.test_reliability import StopAfter


def _config():
    config = make_tiny_config()
    config.lottery.variants = "lt,kd_rewind"
    config.checkpoint.every_steps = 4
    return config


def test_status_follows_a_study_through_a_stop_and_to_the_end(tmp_path):
    config, messages = _config(), []
    run = lottery.LotteryRun(config, tmp_path, log=messages.append,
                             stop_requested=StopAfter(38 + 1 + 10))  # dense: 38 steps, then
    # one poll between runs (a stop there would start no new run), then 10 steps of level 1 lt
    with pytest.raises(TrainingInterrupted):
        run.run()
    assert "[study] run 1 of 5: level 0 dense (0 done;" in messages[1]
    assert any(m.startswith("[study] run 2 of 5: level 1 lt (1 done;") for m in messages)
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [(r["level"], r["variant"], r["distill"]) for r in plan["runs"]] == [
        (0, "dense", False), (1, "lt", False), (1, "kd_rewind", True), (2, "lt", False),
        (2, "kd_rewind", True)]
    rewind = plan["rewind_step"]
    assert plan["runs"][2]["start_step"] == rewind
    assert plan["runs"][2]["steps"] == plan["total_steps"] - rewind

    stopped = status.study_status(tmp_path)
    assert [r["variant"] for r in stopped["done"]] == ["dense"]
    current = stopped["current"]
    assert (current["level"], current["variant"]) == (1, "lt")
    assert current["at_step"] in (8, 10)  # the stop's checkpoint (or the last periodic one)
    assert [(r["level"], r["variant"]) for r in stopped["pending"]] == [
        (1, "kd_rewind"), (2, "lt"), (2, "kd_rewind")]
    dense_rate = stopped["seconds_per_step"][False]
    epochs = results.read_epoch_times(tmp_path)  # every whole epoch timed in this process
    assert [(e["level"], e["variant"], e["distill"]) for e in epochs][:1] == [(0, "dense", False)]
    assert all(e["steps"] > 0 and e["seconds"] > 0 for e in epochs)
    assert dense_rate == pytest.approx(status_pace.lower_quartile(
        [e["seconds"] / e["steps"] for e in epochs if not e["distill"]][-status_pace.PACE_EPOCHS:]))
    # the level-2 kd_rewind reads the teacher logits the level-1 one stores: at the CE pace
    ce_left, kd_left = (38 - current["at_step"]) + 38 + (38 - rewind), 38 - rewind
    assert stopped["steps_left"] == {False: ce_left, True: kd_left}
    # before any KD epoch: the CE pace plus a third of the dense network's (the teacher)
    teacher = statistics.median([e["seconds"] / e["steps"] for e in epochs
                                 if e["level"] == 0]) / 3
    assert stopped["seconds_per_step"][True] == pytest.approx(dense_rate + teacher)
    assert stopped["seconds_left"] == pytest.approx(ce_left * dense_rate
                                                    + kd_left * (dense_rate + teacher))
    text = status.describe(stopped)
    assert "1 of 5 runs done" in text and "now: level 1 lt" in text
    assert current["seconds_left"] == pytest.approx((38 - current["at_step"]) * dense_rate)
    assert "left in it)" in text
    assert "KD runs estimated at the cross-entropy pace plus a third of the dense" in text
    assert status.READER_NOTE in text

    lottery.LotteryRun(config, tmp_path, log=lambda *_: None).run()
    finished = status.study_status(tmp_path)
    assert len(finished["done"]) == 5 and finished["current"] is None
    assert finished["seconds_left"] == 0 and "finished" in status.describe(finished)


def _status(*args):
    return subprocess.run([sys.executable, "-m", "lottery_kd.status", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_status_says_what_a_path_that_is_not_a_study_is(tmp_path):
    """An empty folder, a mistyped path, a file, an old study without plan.json and a damaged
    plan.json: one line each, naming the path and what to do, exit 2, no traceback."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text("{}")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "plan.json").write_text('{"runs": [')
    shapes = {"null_runs": {"steps_per_epoch": 10, "runs": None},
              "no_distill": {"steps_per_epoch": 10, "runs": [
                  {"level": 0, "variant": "dense", "start_step": 0, "steps": 10}]}}
    for name, plan in shapes.items():  # valid JSON of the wrong shape
        (tmp_path / name).mkdir()
        (tmp_path / name / "plan.json").write_text(json.dumps(plan))
    for path, needle in ((tmp_path, "holds no study"), (tmp_path / "typo", "no such folder"),
                         (tmp_path / "file", "is a file"),
                         (tmp_path / "old", "rerun the study command once"),
                         (tmp_path / "damaged", "plan.json cannot be read"),
                         (tmp_path / "null_runs", "plan.json cannot be read (runs or"),
                         (tmp_path / "no_distill", "plan.json cannot be read (runs or")):
        done = _status(path)
        assert done.returncode == 2, path
        assert needle in done.stderr and str(path) in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_the_pace_is_the_lower_quartile_of_recent_epochs_so_busy_ones_do_not_skew_it(tmp_path):
    """A busy stretch (another job beside the study: 12 of the last 20 epochs twice as slow)
    and a paused epoch would move a median; the lower quartile is the undisturbed pace. Epochs
    on an earlier, slower CPU and a restart's compiling partial epoch are no pace at all."""
    plan = {"steps_per_epoch": 10, "runs": [
        {"level": 0, "variant": "dense", "distill": False, "start_step": 0, "steps": 100},
        {"level": 1, "variant": "kd", "distill": True, "start_step": 0, "steps": 100}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    starts = [{"cpu_id": "slow", "time": "2026-12-03T10:00:00+0000"},
              {"cpu_id": "fast", "time": "2026-12-04T10:00:00+0000"}]
    Workdir(tmp_path).environment.write_text("".join(json.dumps(s) + "\n" for s in starts))
    # a finished dense run whose total time includes a long pause: 300 s for 100 steps
    results.append_row(tmp_path / "results.jsonl", {"level": 0, "variant": "dense", "steps": 100,
                                                    "seconds": 300.0, "distill": False,
                                                    "sparsity": 0.0, "test_accuracy": 0.9})
    def dense(seconds, day="04", steps=10):
        return {"level": 0, "variant": "dense", "distill": False, "steps": steps,
                "seconds": seconds, "time": f"2026-12-{day}T12:00:00+0000"}
    slow_cpu = [dense(5.0, day="03")] * 10  # faster per step than any below: another machine
    undisturbed = [dense(s) for s in (10.0, 10.5, 9.5, 10.0, 11.0, 10.0, 10.0)]
    busy = [dense(s) for s in [20.0, 21.0, 19.5, 20.5] * 3]
    restart = [dense(90.0, steps=3)]  # the partial first epoch of a restart, which compiled
    for record in slow_cpu + undisturbed[:4] + busy + restart + [dense(2000.0)] + undisturbed[4:]:
        results.append_epoch_time(tmp_path, record)
    with (tmp_path / results.EPOCH_TIMES).open("a") as handle:
        handle.write('{"level": 0, "varia')  # torn by a crash, then appended after
    results.append_epoch_time(tmp_path, {"level": 1, "variant": "kd", "distill": True,
                                         "steps": 10, "seconds": 15.0,
                                         "time": "2026-12-04T13:00:00+0000"})
    found = status.study_status(tmp_path)
    paces = sorted(e["seconds"] / 10 for e in undisturbed + busy + [dense(2000.0)])
    assert statistics.median(paces) > 1.9  # a median reads the busy stretch
    # between the 5th and 6th fastest of 20: 1.0 + 0.75 * (1.05 - 1.0), an undisturbed pace
    assert found["seconds_per_step"] == {False: pytest.approx(1.0375), True: pytest.approx(1.5)}
    assert found["seconds_left"] == pytest.approx(100 * 1.5)  # the kd run, not yet started
    assert found["pace_from"] == {False: "the lower quartile of its last 20 epochs",
                                  True: "the pruned networks' last epoch"}
    assert ("CE 1.038 s/step from the lower quartile of its last 20 epochs"
            in status.describe(found))


def test_an_estimate_from_the_dense_pace_alone_is_called_an_upper_bound_on_the_sparse_path(
        tmp_path):
    plan = {"steps_per_epoch": 10, "runs": [
        {"level": 0, "variant": "dense", "distill": False, "start_step": 0, "steps": 100},
        {"level": 1, "variant": "lt", "distill": False, "start_step": 0, "steps": 100}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    (tmp_path / "config.json").write_text(json.dumps({"model": {"conv_impl": "sparse"}}))
    for _ in range(3):
        results.append_epoch_time(tmp_path, {"level": 0, "variant": "dense", "distill": False,
                                             "steps": 10, "seconds": 20.0})
    assert status.SPARSE_NOTE in status.describe(status.study_status(tmp_path))
    # the first ticket epoch measures the sparse pace: no longer a bound
    results.append_epoch_time(tmp_path, {"level": 1, "variant": "lt", "distill": False,
                                         "steps": 10, "seconds": 10.0})
    assert status.SPARSE_NOTE not in status.describe(status.study_status(tmp_path))
    # a study on the dense kernels: the dense pace is the tickets' pace too
    (tmp_path / "config.json").write_text(json.dumps({"model": {"conv_impl": "native"}}))
    (tmp_path / results.EPOCH_TIMES).unlink()
    results.append_epoch_time(tmp_path, {"level": 0, "variant": "dense", "distill": False,
                                         "steps": 10, "seconds": 20.0})
    assert status.SPARSE_NOTE not in status.describe(status.study_status(tmp_path))


def test_the_teacher_pace_before_any_kd_epoch_is_the_dense_networks_on_the_latest_cpu(
        tmp_path):
    """A study whose dense network trained on a slow CPU, then on a fast one where the tickets
    train: a KD step's teacher costs a third of the fast CPU's dense step, not of the median
    over both; where no start names its CPU, the dense network's last epochs stand in."""
    plan = {"steps_per_epoch": 10, "runs": [
        {"level": 0, "variant": "dense", "distill": False, "start_step": 0, "steps": 100},
        {"level": 1, "variant": "lt", "distill": False, "start_step": 0, "steps": 100},
        {"level": 1, "variant": "kd", "distill": True, "start_step": 0, "steps": 100}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    starts = [{"cpu_id": "family 23 model 1, avx2", "time": "2026-12-03T10:00:00+0000"},
              {"cpu_id": "family 25 model 1, avx2", "time": "2026-12-04T18:00:00+0000"}]
    Workdir(tmp_path).environment.write_text("".join(json.dumps(s) + "\n" for s in starts))
    epochs = ([(0, "dense", 60.0, "2026-12-03T11:00:00+0000")] * 7
              + [(0, "dense", 30.0, "2026-12-04T18:10:00+0000")] * 3
              + [(1, "lt", 15.0, "2026-12-04T19:00:00+0000")] * 2)
    for level, variant, seconds, when in epochs:
        results.append_epoch_time(tmp_path, {"level": level, "variant": variant,
                                             "distill": False, "steps": 10, "seconds": seconds,
                                             "time": when})
    found = status.study_status(tmp_path)
    assert found["seconds_per_step"] == {False: pytest.approx(1.5), True: pytest.approx(2.5)}
    assert "a third of the dense network's on the same CPU" in " ".join(found["notes"])
    # older records, no times: the dense network's last PACE_EPOCHS epochs (7 slow, 3 fast)
    Workdir(tmp_path).environment.unlink()
    found = status.study_status(tmp_path)
    assert found["seconds_per_step"][True] == pytest.approx(1.5 + 6.0 / 3)


def test_a_start_on_another_cpu_says_the_pace_is_the_old_cpus_until_an_epoch_there(tmp_path):
    """A study resumed on a new machine: until its first whole epoch there, the estimate rests
    on the old CPU's epochs, and status says so; after it, the note goes."""
    plan = {"steps_per_epoch": 10, "runs": [
        {"level": 1, "variant": "lt", "distill": False, "start_step": 0, "steps": 100}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    starts = [{"cpu_id": "family 25 model 1, avx2", "time": "2026-12-04T18:00:00+0000"},
              {"cpu_id": "family 25 model 17, avx512", "time": "2026-12-05T14:00:00+0000"}]
    Workdir(tmp_path).environment.write_text("".join(json.dumps(s) + "\n" for s in starts))

    def add_epoch(seconds: float, when: str) -> None:
        results.append_epoch_time(tmp_path, {"level": 1, "variant": "lt", "distill": False,
                                             "steps": 10, "seconds": seconds, "time": when})

    add_epoch(15.0, "2026-12-04T19:00:00+0000")
    notes = " ".join(status.study_status(tmp_path)["notes"])
    assert ("paces measured on family 25 model 1, avx2; the latest start runs on "
            "family 25 model 17, avx512") in notes
    assert "paces measured on" in status.describe(status.study_status(tmp_path))
    results.append_epoch_time(tmp_path, {"level": 1, "variant": "lt", "distill": True,
                                         "steps": 10, "seconds": 9.0, "teacher": "read",
                                         "time": "2026-12-05T14:03:00+0000"})
    assert "paces measured on" in " ".join(status.study_status(tmp_path)["notes"])  # sets none
    add_epoch(10.0, "2026-12-05T14:05:00+0000")
    found = status.study_status(tmp_path)
    assert not any("paces measured on" in note for note in found["notes"])
    assert found["seconds_per_step"][False] == pytest.approx(1.0)


# level 1's kd computes the teacher logits that its kd_rewind (the same steps) reads
READER_PLAN = {"steps_per_epoch": 10, "runs": [
    {"level": 0, "variant": "dense", "distill": False, "start_step": 0, "steps": 10},
    {"level": 1, "variant": "kd", "distill": True, "start_step": 0, "steps": 10},
    {"level": 1, "variant": "kd_rewind", "distill": True, "start_step": 0, "steps": 10},
    {"level": 2, "variant": "kd", "distill": True, "start_step": 0, "steps": 100}]}


def test_kd_epochs_that_read_stored_teacher_logits_do_not_set_the_kd_pace(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps(READER_PLAN))
    epochs = [(0, "dense", False, 10.0, None), (1, "kd", True, 15.0, "computed"),
              (1, "kd_rewind", True, 9.0, "read"), (1, "kd_rewind", True, 9.5, "read")]
    for level, variant, distill, seconds, teacher in epochs:
        results.append_epoch_time(tmp_path, {"level": level, "variant": variant, "steps": 10,
                                             "distill": distill, "seconds": seconds,
                                             **({"teacher": teacher} if teacher else {})})
    found = status.study_status(tmp_path)
    # the KD pace is the epoch that ran the teacher, not a median with the two that read
    assert found["seconds_per_step"] == {False: pytest.approx(1.0), True: pytest.approx(1.5)}


def test_finished_runs_that_read_stored_teacher_logits_do_not_set_the_kd_pace(tmp_path):
    """With no KD epoch that ran the teacher on record, the KD pace falls back to the finished
    KD rows: the run that computed the logits, not a mean with the run that only read them."""
    from lottery_kd.study.workdir import Workdir
    (tmp_path / "plan.json").write_text(json.dumps(READER_PLAN))
    Workdir(tmp_path).environment.write_text(json.dumps({"teacher_logits": "cached"}) + "\n")
    for variant, distill, seconds in (("dense", False, 10.0), ("kd", True, 15.0),
                                      ("kd_rewind", True, 9.0)):
        results.append_row(Workdir(tmp_path).results, {
            "level": 0 if variant == "dense" else 1, "variant": variant, "sparsity": 0.2,
            "test_accuracy": 0.5, "distill": distill, "steps": 10, "seconds": seconds})
    results.append_epoch_time(tmp_path, {"level": 1, "variant": "kd_rewind", "steps": 10,
                                         "distill": True, "seconds": 9.0, "teacher": "read"})
    found = status.study_status(tmp_path)
    assert found["seconds_per_step"][True] == pytest.approx(1.5)


def test_kd_steps_count_as_reads_only_where_the_store_holds_them_or_an_earlier_run_will(
        tmp_path):
    """A finished KD run's logits count only while its chunk files are on disk (a fresh disk
    has none, and the next KD run computes them again); a later KD run reads what an earlier
    one still to train will store."""
    plan = {"steps_per_epoch": 10, "runs": [
        {"level": 0, "variant": "dense", "distill": False, "start_step": 0, "steps": 100},
        {"level": 1, "variant": "kd", "distill": True, "start_step": 0, "steps": 100},
        {"level": 2, "variant": "kd", "distill": True, "start_step": 0, "steps": 100},
        {"level": 2, "variant": "kd_rewind", "distill": True, "start_step": 30, "steps": 70}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    paths = Workdir(tmp_path)
    paths.environment.write_text(json.dumps({"teacher_logits": "cached"}) + "\n")
    for level, variant, distill, seconds in ((0, "dense", False, 1.0), (1, "kd", True, 1.5)):
        results.append_row(paths.results, {
            "level": level, "variant": variant, "sparsity": 0.2 * level, "test_accuracy": 0.5,
            "distill": distill, "steps": 100, "seconds": 100 * seconds})
        results.append_epoch_time(tmp_path, {"level": level, "variant": variant, "steps": 10,
                                             "distill": distill, "seconds": 10 * seconds})
    fresh = status.study_status(tmp_path)  # level 1's logits are gone: level 2's kd computes
    assert fresh["steps_left"] == {False: 70, True: 100}  # and its kd_rewind reads them
    assert fresh["seconds_left"] == pytest.approx(70 * 1.0 + 100 * 1.5)
    assert "holds 0 of their steps now" in status.describe(fresh)
    import numpy as np
    older = paths.teacher_logits / "fedcba9876543210"  # another teacher's, older: not counted
    store = paths.teacher_logits / "0123456789abcdef"
    for folder, first, filled in ((older, 60, 20), (store, 0, 20), (store, 20, 15)):
        folder.mkdir(parents=True, exist_ok=True)
        logits = np.full((20, 2, 3), np.nan, np.float32)
        logits[:filled] = 1.0  # the second chunk's last five rows never computed
        np.save(folder / f"chunk_{first // 20:05d}.npy", logits)
        (folder / f"chunk_{first // 20:05d}.json").write_text(
            json.dumps({"sha256": "x", "first_step": first, "steps": 20}))
    os.utime(older, (1, 1))
    (store / "chunk_00004.json").write_text("{damaged")  # computed again: not counted
    (store / "chunk_00005.json").write_text(json.dumps({"first_step": 100, "steps": 20}))  # no .npy
    stored = status.study_status(tmp_path)  # steps 0-34 stored
    assert stored["steps_left"] == {False: 105, True: 65}
    assert "holds 35 of their steps now" in status.describe(stored)
    assert "run the teacher on 65 steps" in status.describe(stored)
    paths.environment.write_text(json.dumps({"teacher_logits": "in_step"}) + "\n")
    assert status.study_status(tmp_path)["steps_left"] == {False: 0, True: 170}


def test_a_resumed_kd_run_is_estimated_in_the_teacher_logit_mode_it_started_with(tmp_path):
    """The running KD run keeps the kd.teacher_logits mode its resume checkpoints record (in_step
    where they predate the record); the runs still to start take the latest start's. An in_step
    run runs the teacher on every step and stores nothing for a later run to read."""
    plan = {"steps_per_epoch": 10, "runs": [
        {"level": 0, "variant": "dense", "distill": False, "start_step": 0, "steps": 100},
        {"level": 2, "variant": "kd", "distill": True, "start_step": 0, "steps": 100},
        {"level": 2, "variant": "kd_rewind", "distill": True, "start_step": 30, "steps": 70}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    paths = Workdir(tmp_path)
    results.append_row(paths.results, {"level": 0, "variant": "dense", "sparsity": 0.0,
                                       "test_accuracy": 0.5, "steps": 100, "seconds": 100.0})
    meta = paths.resume("level_2_kd") / "50" / "meta" / "metadata"
    meta.parent.mkdir(parents=True)

    def steps_left(latest_start: str, fingerprint) -> dict:
        paths.environment.write_text(json.dumps({"teacher_logits": latest_start}) + "\n")
        meta.write_text("{damaged" if fingerprint is None else
                        json.dumps({"fingerprint": fingerprint}))
        found = status.study_status(tmp_path)
        assert found["current"]["at_step"] == 50
        return found["steps_left"]

    # kd computes steps 50-99; kd_rewind (30-99) reads them if kd stores them, computes 30-49
    assert steps_left("cached", {"teacher_logits": "cached"}) == {False: 50, True: 70}
    assert steps_left("cached", {"teacher_logits": "in_step"}) == {False: 0, True: 120}
    assert steps_left("cached", {"model": "resnet20"}) == {False: 0, True: 120}  # predates
    assert steps_left("cached", None) == {False: 50, True: 70}  # unreadable: the start's mode
    assert steps_left("in_step", {"teacher_logits": "cached"}) == {False: 0, True: 120}


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    """`python -m lottery_kd.status DIR ... | head`: head exits after one line, and status's
    writes (more than a pipe holds) meet a closed pipe."""
    plan = {"steps_per_epoch": 10, "runs": [
        {"level": 0, "variant": "dense", "distill": False, "start_step": 0, "steps": 100}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    command = [sys.executable, "-m", "lottery_kd.status", *[str(tmp_path)] * 2000]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    first = process.stdout.readline()
    process.stdout.close()  # the reader stops, as head does after its lines
    errors = process.stderr.read()
    assert process.wait(timeout=120) == 0
    assert first.startswith(str(tmp_path))
    assert "Traceback" not in errors and "BrokenPipe" not in errors, errors


def test_status_names_each_finished_runs_accuracy_and_the_running_runs_last_evaluation(
        tmp_path):
    """From the committed full-length study's rows and plan: every finished run's test accuracy
    at the end, a line per level, and the running run's last evaluation read from its
    TensorBoard scalars (the epoch with the highest step, train-only steps skipped)."""
    from lottery_kd.training.tensorboard import ScalarWriter
    full = REPO / "docs" / "results" / "full_length" / "resnet20_renda_seed0"
    for name in ("config.json", "plan.json", "results.jsonl"):
        (tmp_path / name).write_bytes((full / name).read_bytes())
    rows = results.read_rows(str(tmp_path / "results.jsonl"))
    plan = json.loads((tmp_path / "plan.json").read_text())
    running = next(r for r in plan["runs"]
                   if (r["level"], r["variant"]) not in {(x["level"], x["variant"]) for x in rows})
    tag = f"level_{running['level']}_{running['variant']}"
    (Workdir(tmp_path).resume(tag) / str(running["start_step"] + 780)).mkdir(parents=True)
    writer = ScalarWriter(Workdir(tmp_path).tensorboard(tag))
    writer.scalars(running["start_step"] + 390, {"epoch": 1, "test_accuracy": 0.5})
    writer.scalars(running["start_step"] + 780, {"epoch": 2, "test_accuracy": 0.625})
    writer.scalars(running["start_step"] + 800, {"train_loss": 1.0})  # no evaluation
    writer.close()

    found = status.study_status(tmp_path)
    assert found["current"]["last_test"] == {"epoch": 2, "step": running["start_step"] + 780,
                                             "test_accuracy": 0.625}
    text = status.describe(found)
    assert f"last evaluated: epoch 2 (step {running['start_step'] + 780}), test accuracy " \
           "62.50 %" in text
    for row in rows:
        line = next(t for t in text.splitlines() if t.startswith(f"    level {row['level']} "))
        assert f"{row['variant']} {100 * row['test_accuracy']:.2f}" in line
    assert "    level 0 (dense): dense " in text

    (Workdir(tmp_path).tensorboard(tag) / "events.out.tfevents.1.x").write_bytes(b"\x05torn")
    assert status.study_status(tmp_path)["current"]["last_test"]["epoch"] == 2


def test_a_running_run_says_when_it_ends_at_the_pace_and_a_stopped_one_does_not(tmp_path):
    """The end time is the last resume checkpoint's time plus the steps left at the pace; a
    study nobody runs (a stopped one, a committed copy) gets no clock time."""
    import os

    from lottery_kd.study import workdir_lock
    plan = {"steps_per_epoch": 10, "runs": [
        {"level": 1, "variant": "lt", "distill": False, "start_step": 0, "steps": 100}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    for _ in range(3):
        results.append_epoch_time(tmp_path, {"level": 1, "variant": "lt", "distill": False,
                                             "steps": 10, "seconds": 20.0})
    checkpoint = Workdir(tmp_path).resume("level_1_lt") / "40"
    checkpoint.mkdir(parents=True)
    saved = 1_796_000_000  # 2026-11-30 00:53:20 UTC
    os.utime(checkpoint, (saved, saved))
    assert "ends about" not in status.describe(status.study_status(tmp_path))
    with workdir_lock.WorkdirLock(tmp_path):
        text = status.describe(status.study_status(tmp_path))
    # 60 steps left at 2 s a step: 120 s after the checkpoint
    assert "at this pace it ends about 2026-11-30 00:55 UTC" in text, text
