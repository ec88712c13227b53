"""How far a study is and about how long the rest will take, while it runs or after a stop.

    python -m lottery_kd.status runs/cifar10_resnet20 [more workdirs] [--json]

Reads only plan.json (the study's planned runs, written when it starts), results.jsonl, the
names and times of the resume checkpoints, epoch_times.jsonl and the running run's TensorBoard
scalars (its last test accuracy), and the teacher-logit store's chunk files: no data, no JAX,
instant, safe beside a running study. It lists each finished run's test accuracy. The estimate
uses this study's own speed, KD and cross-entropy epochs apart (distillation also runs the
teacher): the lower quartile of the seconds per step of its last status_pace.PACE_EPOCHS whole
epochs of that kind on the CPU of its latest epoch (KD epochs that read stored teacher logits
left out; training plus evaluation; whole, because the partial epoch after a restart also
compiles; the lower quartile, because a paused or busy machine only ever slows an epoch, and a
stretch of busy epochs would move a median), else, for studies started before epoch times were
recorded, the mean of its finished runs, else the pace between the current run's last two resume
checkpoints. Before any KD epoch, a KD step is the cross-entropy step plus a third of the dense
network's on the same CPU (the teacher's forward pass); before any pruned network has trained on
the sparse kernels (model.conv_impl=sparse), the dense network's pace makes the estimate an
upper bound, and it says so. Where the study caches the teacher's logits
(training.teacher_cache), a KD step whose logits the store holds now, or an earlier KD run still
to train will store, reads them and is counted at the cross-entropy pace; the running KD run
keeps the mode its resume checkpoints record (analysis.status_pace has the paces). A study
resumed on another CPU keeps the old CPU's pace until its first whole epoch there, and says so.
"""

from __future__ import annotations

import argparse
import json
import stat
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from lottery_kd.analysis import status_pace as pace
from lottery_kd.analysis.curves import read_scalars
from lottery_kd.runtime import environment
from lottery_kd.study import jsonlines, results, workdir_lock
from lottery_kd.study.checkpoint_meta import resumed_teacher_logits
from lottery_kd.study.workdir import Workdir


def _latest_checkpoints(directory: Path) -> list[tuple[int, float]]:
    """(step, modification time) of a run's finished resume checkpoints, oldest first; one the
    running study deletes while this reads (it keeps the newest few) is left out."""
    try:
        steps = [path for path in directory.iterdir() if path.name.isdigit()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for path in steps:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode):
            found.append((int(path.name), info.st_mtime))
    return sorted(found)


def study_status(workdir: str | Path) -> dict:
    """Done, current and pending runs of one study, with seconds-per-step rates and an ETA."""
    workdir = Path(workdir)
    paths = Workdir(workdir)
    plan = _read_plan(workdir)
    valid_rows, damaged_rows = results.scan_rows(paths.results)
    valid_epochs, damaged_epochs = jsonlines.scan(paths.epoch_times, results.EPOCH_TIME_FIELDS)
    rows = {(r["level"], r["variant"]): r for r in valid_rows}
    cached = pace.caches_teacher_logits(workdir)
    readers = pace.cache_readers(plan["runs"]) if cached else set()
    rates: dict[bool, list[float]] = {False: [], True: []}
    for key, row in rows.items():  # a reader's pace is neither a KD run's nor a CE one's
        if row.get("steps") and row.get("seconds") and key not in readers:
            rates[bool(row.get("distill"))].append(row["seconds"] / row["steps"])
    done, pending, current = [], [], None
    checkpoint_pace: Optional[bool] = None  # the kind whose pace comes from resume checkpoints
    for run in plan["runs"]:
        key = (run["level"], run["variant"])
        if key in rows:
            done.append({**run, **{k: rows[key].get(k) for k in
                                   ("seconds", "test_accuracy", "sparsity")}})
            continue
        tag = f"level_{run['level']}_{run['variant']}"
        checkpoints = _latest_checkpoints(paths.resume(tag))
        if checkpoints and current is None:
            step = checkpoints[-1][0]
            current = {**run, "at_step": step, "at_time": checkpoints[-1][1],
                       "last_test": _last_test(paths, tag),
                       "fraction": (step - run["start_step"]) / max(1, run["steps"])}
            if run["distill"]:  # it resumes in the mode it started with (None: unrecorded)
                current["teacher_logits"] = resumed_teacher_logits(paths.resume(tag))
            if len(checkpoints) > 1 and not rates[run["distill"]]:
                (s0, t0), (s1, t1) = checkpoints[-2], checkpoints[-1]
                # at least half an epoch apart: a stop's checkpoint right after an epoch's
                # evaluation would give a pace that is mostly evaluation
                if s1 - s0 >= plan["steps_per_epoch"] // 2 and t1 > t0:
                    rates[run["distill"]].append((t1 - t0) / (s1 - s0))
                    checkpoint_pace = run["distill"]
        else:
            pending.append(run)
    rate = {kind: (sum(v) / len(v) if v else None) for kind, v in rates.items()}
    source = {kind: ("its last two resume checkpoints" if kind == checkpoint_pace else
                     "its finished runs") if rates[kind] else None for kind in rates}
    starts = environment.read_starts(workdir)
    paced = pace.epoch_paces(valid_epochs, plan["steps_per_epoch"], starts, rate, source)
    dense = pace.dense_paces(paced, starts)
    notes = [pace.fill_missing_pace(rate, dense), pace.cpu_change_note(paced, starts)]
    left_steps, seconds_left = _time_left(workdir, plan, pending, current, rate, notes, cached)
    if _sparse_runs_unmeasured(workdir, valid_epochs, pending + [current]):
        notes.append(SPARSE_NOTE)
    notes = [note for note in notes if note]
    return {"workdir": str(workdir), "runs": len(plan["runs"]), "done": done,
            "current": current, "pending": pending, "seconds_per_step": rate,
            "steps_left": left_steps, "seconds_left": seconds_left, "notes": notes,
            "pace_from": source, "running": workdir_lock.running_note(workdir),
            "skipped": [jsonlines.describe(d) for d in (damaged_rows, damaged_epochs) if d]}


def _time_left(workdir: Path, plan: dict, pending: list[dict], current: Optional[dict],
               rate: dict, notes: list[str], cached: bool
               ) -> tuple[dict[bool, int], Optional[float]]:
    """Steps left at each pace (True: KD steps that run the teacher) and their seconds; sets
    current["seconds_left"] and adds the note on stored teacher logits where some are read."""
    order = [(r["level"], r["variant"]) for r in plan["runs"]]
    left = sorted(pending + ([current] if current is not None else []),
                  key=lambda r: order.index((r["level"], r["variant"])))  # training order
    teacher, stored = pace.teacher_steps(workdir, left, cached)
    left_steps, kd_steps = {False: 0, True: 0}, 0
    for run in left:
        steps = run_left(run) if run is current else run["steps"]
        kd_steps += steps if run["distill"] else 0
        by_kind = {True: teacher.get((run["level"], run["variant"]), 0)}
        by_kind[False] = steps - by_kind[True]
        left_steps = {kind: left_steps[kind] + by_kind[kind] for kind in (False, True)}
        if run is current and rate[False] is not None:
            current["seconds_left"] = sum(by_kind[k] * rate[k] for k in (False, True))
    if left_steps[True] < kd_steps:
        notes.append(f"{READER_NOTE} (the store under teacher_logits/ holds {stored:,} of "
                     "their steps now; the KD runs still to train run the teacher on "
                     f"{left_steps[True]:,} steps)")
    return left_steps, (None if rate[False] is None else
                        sum(left_steps[kind] * rate[kind] for kind in (False, True)))


def _last_test(paths: Workdir, tag: str) -> Optional[dict]:
    """{"epoch", "step", "test_accuracy"} of a run's last evaluation in its TensorBoard scalars
    (written each epoch, so it may be past the last resume checkpoint), or None."""
    try:
        evaluated = [r for r in read_scalars(paths.tensorboard(tag)) if "test_accuracy" in r]
    except OSError:
        return None
    if not evaluated:
        return None
    last = evaluated[-1]
    return {"epoch": int(last.get("epoch", 0)), "step": int(last["step"]),
            "test_accuracy": last["test_accuracy"]}


READER_NOTE = ("KD steps whose teacher logits are stored, or will be by an earlier KD run "
               "(kd.teacher_logits cached), estimated at the cross-entropy pace")


SPARSE_NOTE = ("an upper bound: the pruned networks run on model.conv_impl=sparse, which skips "
               "their pruned weights, and none has trained an epoch yet, so every pace so far "
               "is the dense network's")


def _sparse_runs_unmeasured(workdir: Path, epochs: list[dict], runs: list) -> bool:
    """Whether runs of pruned networks are still to come on the sparse kernels (config.json's
    model.conv_impl) while every recorded epoch is the dense network's, which runs slower."""
    try:
        conv_impl = json.loads(Workdir(workdir).config.read_text())["model"]["conv_impl"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (conv_impl == "sparse" and any(r and r["level"] > 0 for r in runs)
            and not any(e.get("level", 0) > 0 for e in epochs))


class StatusError(ValueError):
    """A path that holds no readable study."""


RUN_FIELDS = {"level", "variant", "start_step", "steps", "distill"}  # of each plan.json run


def _read_plan(workdir: Path) -> dict:
    """plan.json of a study; StatusError saying what the path is when there is none."""
    plan_path = Workdir(workdir).plan
    if not workdir.exists():
        raise StatusError(f"{workdir}: no such folder; check the path (a study's workdir is "
                          "the --workdir it was started with)")
    if not workdir.is_dir():
        raise StatusError(f"{workdir} is a file, not a study's workdir")
    if not plan_path.is_file():
        if Workdir(workdir).config.is_file():
            raise StatusError(f"{plan_path} is missing: this study was started by a version "
                              "that did not write it; rerun the study command once (it resumes "
                              "and writes it)")
        raise StatusError(f"{workdir} holds no study (no plan.json or config.json)")
    try:
        plan = json.loads(plan_path.read_text())
        runs_ok = isinstance(plan["runs"], list) and all(
            isinstance(run, dict) and RUN_FIELDS <= set(run) for run in plan["runs"])
        shaped = runs_ok and isinstance(plan["steps_per_epoch"], int)
    except (OSError, ValueError, KeyError, TypeError) as error:
        why = type(error).__name__
    else:
        why = "" if shaped else "runs or steps_per_epoch of the wrong shape"
    if why:
        raise StatusError(f"{plan_path} cannot be read ({why}); rerun the study command once: "
                          "it rewrites plan.json when it starts")
    return plan


def run_left(current: dict) -> int:
    """Steps left in the training run a resume checkpoint belongs to."""
    return max(0, current["start_step"] + current["steps"] - current["at_step"])


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "unknown"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def _finished_lines(done: list[dict]) -> list[str]:
    """The finished runs' test accuracy at the end, a line per pruning level."""
    by_level: dict[str, list[str]] = {}
    for run in done:
        if run.get("test_accuracy") is not None:
            sparsity = run.get("sparsity")
            level = f"level {run['level']}" + (
                " (dense)" if run["level"] == 0 else "" if sparsity is None else
                f" ({100 * sparsity:.2f} % sparse)")
            by_level.setdefault(level, []).append(
                f"{run['variant']} {100 * run['test_accuracy']:.2f}")
    if not by_level:
        return []
    return ["  done, test accuracy % at the end:"] + [
        f"    {level}: {', '.join(cells)}" for level, cells in by_level.items()]


def describe(status: dict) -> str:
    """A few lines a person reads: done / current / pending, and the estimate."""
    lines = [f"{status['workdir']}: {len(status['done'])} of {status['runs']} runs done"
             + (f", {status['running']}" if status.get("running") else "")]
    lines += [f"  warning: {text}" for text in status.get("skipped", [])]
    lines += _finished_lines(status["done"])
    current = status["current"]
    if current is not None:
        lines.append(f"  now: level {current['level']} {current['variant']}, step "
                     f"{current['at_step']} of {current['start_step'] + current['steps']} "
                     f"({100 * current['fraction']:.0f}% of this run, at its last resume "
                     "checkpoint" + (f"; about {_duration(current['seconds_left'])} left in it"
                                     if current.get("seconds_left") is not None else "") + ")")
        if status.get("running") and current.get("seconds_left") is not None:
            ends = time.gmtime(current["at_time"] + current["seconds_left"])
            lines.append(f"  at this pace it ends about {time.strftime('%Y-%m-%d %H:%M', ends)} "
                         "UTC, if nothing stops or slows it")
        if current.get("last_test"):
            last = current["last_test"]
            lines.append(f"  last evaluated: epoch {last['epoch']} (step {last['step']}), "
                         f"test accuracy {100 * last['test_accuracy']:.2f} %")
    if status["pending"]:
        names = ", ".join(f"L{r['level']} {r['variant']}" for r in status["pending"])
        lines.append(f"  pending ({len(status['pending'])}): {names}")
    pace = "; ".join(f"{'KD' if kind else 'CE'} {value:.3f} s/step"
                     + (f" from {status['pace_from'][kind]}" if status["pace_from"][kind] else "")
                     for kind, value in status["seconds_per_step"].items() if value is not None)
    if status["current"] is None and not status["pending"]:
        lines.append("  finished")
    else:
        if not status.get("running"):
            lines.append("  not running: rerun the study's command to resume it")
        if status["seconds_left"] is None:
            lines.append("  time left: unknown until a run finishes or two resume checkpoints "
                         "half an epoch apart exist")
        else:
            lines.append(f"  time left: about {_duration(status['seconds_left'])}")
            if pace:
                lines.append(f"    pace: {pace}")
            lines += [f"    - {note}" for note in status.get("notes", [])]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lottery_kd.status",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", help="study workdirs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    statuses = []
    for workdir in args.workdirs:
        try:
            statuses.append(study_status(workdir))
        except StatusError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    try:
        _print(statuses, args.json)
    except BrokenPipeError:  # the reader stopped early (`| head`): nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # quiet at exit's flush
    return 0


def _print(statuses: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(statuses, indent=1))
        return
    print("\n".join(describe(s) for s in statuses))
    total = [s["seconds_left"] for s in statuses]
    if len(statuses) > 1 and all(t is not None for t in total):
        print(f"all: about {_duration(sum(total))} left, one study after another")


if __name__ == "__main__":
    sys.exit(main())
