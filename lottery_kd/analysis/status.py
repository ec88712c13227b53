"""How far a study is and about how long the rest will take, while it runs or after a stop.

    python -m lottery_kd.status runs/cifar10_resnet20 [more workdirs] [--json]

Reads only plan.json (the study's planned runs, written when it starts), results.jsonl, the
names and times of the resume checkpoints, epoch_times.jsonl and the running run's TensorBoard
scalars (its last test accuracy): no data, no JAX, instant, safe beside a running study. It
lists each finished run's test accuracy. The estimate uses this study's own speed, KD and
cross-entropy epochs apart (distillation also runs the teacher): the lower quartile of the
seconds per step of its last PACE_EPOCHS whole epochs of that kind on the CPU of its latest
epoch (KD epochs that read stored teacher logits left out; training plus evaluation; whole,
because the partial epoch after a restart also compiles; the lower quartile, because a paused
or busy machine only ever slows an epoch, and a stretch of busy epochs would move a median),
else, for studies started before epoch times were recorded, the mean of its finished runs, else
the pace between the current run's last two resume checkpoints. Before any KD epoch, a KD step
is the cross-entropy step plus a third of the dense network's on the same CPU (the teacher's
forward pass); before any pruned network has trained on the sparse kernels
(model.conv_impl=sparse), the dense network's pace makes the estimate an upper bound, and it
says so. Where the study caches the teacher's logits (training.teacher_cache), a KD run whose
steps an earlier KD run covers reads them and is counted at the cross-entropy pace. A study
resumed on another CPU keeps the old CPU's pace until its first whole epoch there, and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from lottery_kd.analysis.curves import read_scalars
from lottery_kd.runtime import environment
from lottery_kd.study import jsonlines, results, workdir_lock
from lottery_kd.study.workdir import Workdir

PACE_EPOCHS = 20  # the lower quartile of 20 needs 5 undisturbed epochs; a median of 10, 6


def _latest_checkpoints(directory: Path) -> list[tuple[int, float]]:
    """(step, modification time) of a run's finished resume checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(p.name), p.stat().st_mtime) for p in directory.iterdir()
             if p.is_dir() and p.name.isdigit()]
    return sorted(found)


def study_status(workdir: str | Path) -> dict:
    """Done, current and pending runs of one study, with seconds-per-step rates and an ETA."""
    workdir = Path(workdir)
    paths = Workdir(workdir)
    plan = _read_plan(workdir)
    valid_rows, damaged_rows = results.scan_rows(paths.results)
    valid_epochs, damaged_epochs = jsonlines.scan(paths.epoch_times, results.EPOCH_TIME_FIELDS)
    rows = {(r["level"], r["variant"]): r for r in valid_rows}
    readers = _cache_readers(plan["runs"]) if _caches_teacher_logits(workdir) else set()
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
    paced = _epoch_paces(valid_epochs, plan["steps_per_epoch"], starts, rate, source)
    dense = _dense_paces(paced, starts)
    notes = [_fill_missing_pace(rate, dense), _cpu_change_note(paced, starts)]
    if readers & {(r["level"], r["variant"]) for r in pending + [current] if r}:
        notes.append(READER_NOTE)
    if _sparse_runs_unmeasured(workdir, valid_epochs, pending + [current]):
        notes.append(SPARSE_NOTE)
    notes = [note for note in notes if note]
    left_steps = {False: 0, True: 0}
    for run in pending + ([current] if current is not None else []):
        kind = run["distill"] and (run["level"], run["variant"]) not in readers
        left_steps[kind] += run_left(run) if run is current else run["steps"]
    seconds_left = (None if rate[False] is None else
                    sum(left_steps[kind] * rate[kind] for kind in (False, True)))
    if current is not None and rate[False] is not None:
        kind = current["distill"] and (current["level"], current["variant"]) not in readers
        current["seconds_left"] = run_left(current) * rate[kind]
    return {"workdir": str(workdir), "runs": len(plan["runs"]), "done": done,
            "current": current, "pending": pending, "seconds_per_step": rate,
            "steps_left": left_steps, "seconds_left": seconds_left, "notes": notes,
            "pace_from": source, "running": workdir_lock.running_note(workdir),
            "skipped": [jsonlines.describe(d) for d in (damaged_rows, damaged_epochs) if d]}


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


READER_NOTE = ("KD runs that read the teacher logits an earlier KD run stored "
               "(kd.teacher_logits cached) estimated at the cross-entropy pace")


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


def _caches_teacher_logits(workdir: Path) -> bool:
    """Whether the study's latest start gives new KD runs cached teacher logits (its record in
    environment.jsonl; starts from before the cache did not)."""
    starts = jsonlines.scan(Workdir(workdir).environment)[0]
    return bool(starts) and starts[-1].get("teacher_logits") == "cached"


def _cache_readers(runs: list[dict]) -> set[tuple[int, str]]:
    """The KD runs of a plan whose every step an earlier KD run covers: with cached teacher
    logits they read them all and run at the cross-entropy step's pace."""
    readers, covered = set(), []
    for run in (r for r in runs if r["distill"]):
        first, end = run["start_step"], run["start_step"] + run["steps"]
        if any(a <= first and end <= b for a, b in covered):
            readers.add((run["level"], run["variant"]))
        covered.append((first, end))
    return readers


def _epoch_paces(epochs: list[dict], steps_per_epoch: int, starts: list[dict], rate: dict,
                 source: dict) -> list[dict]:
    """Sets rate[kind] (and source[kind]) to the lower quartile of the seconds per step of the
    last PACE_EPOCHS epochs of each kind on the latest epoch's CPU, the pruned networks' alone
    once any has trained (every run still to come is one, and on the sparse kernels they run
    faster than the dense network); returns the whole epochs. Whole epochs only, where there
    are any: the partial first epoch after each (re)start also compiles, so a study restarted
    often would look slower than it trains."""
    epochs = ([e for e in epochs if e.get("steps") == steps_per_epoch]
              or [e for e in epochs if e.get("steps")])
    paced = [e for e in epochs if _sets_pace(e)]
    latest = environment.epoch_cpu(paced[-1], starts) if paced else "not recorded"
    if latest != "not recorded":  # another machine's epochs would mix speeds 2x apart
        paced = [e for e in paced if environment.epoch_cpu(e, starts) == latest]
    for kind in (False, True):
        of_kind = [e for e in paced if bool(e.get("distill")) == kind]
        of_kind = [e for e in of_kind if e["level"] > 0] or of_kind
        values = [e["seconds"] / e["steps"] for e in of_kind][-PACE_EPOCHS:]
        if values:
            rate[kind] = lower_quartile(values)
            whose = "the pruned networks'" if of_kind[-1]["level"] > 0 else "its"
            source[kind] = (f"the lower quartile of {whose} last {len(values)} epochs"
                            if len(values) > 1 else f"{whose} last epoch")
    return epochs


def _sets_pace(epoch: dict) -> bool:
    """Whether an epoch's time is a pace: not one that read stored teacher logits (neither a KD
    step's pace nor a cross-entropy one's)."""
    return epoch.get("teacher") not in ("read", "mixed")


def _cpu_change_note(epochs: list[dict], starts: list[dict]) -> str:
    """Says so where the latest start runs on another CPU than the latest whole epoch that
    sets a pace ran on (as _epoch_paces picks them: not one that read stored teacher logits):
    the paces are the old CPU's (speeds differ 2x between machines) until such an epoch
    finishes on the new one."""
    epochs = [e for e in epochs if _sets_pace(e)]
    measured = environment.epoch_cpu(epochs[-1], starts) if epochs and starts else ""
    now = starts[-1].get("cpu_id") if starts else None
    if not now or measured in ("", "not recorded", now):
        return ""
    return (f"paces measured on {measured}; the latest start runs on {now}, where no whole "
            "epoch has finished yet: the estimate follows that CPU after its first")


def lower_quartile(values: list[float]) -> float:
    """The first quartile (inclusive method: a value between two measured ones)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=4, method="inclusive")[0]


def _dense_paces(epochs: list[dict], starts: list[dict]) -> list[float]:
    """The dense network's seconds per step, for a KD step's teacher: its epochs on the CPU of
    the study's latest epoch (environment.jsonl says which), else its last PACE_EPOCHS epochs,
    the nearest in time. Speeds differ between machines by 2x or more, and the cross-entropy
    pace it is added to is the latest epochs'."""
    dense = [e for e in epochs if e["level"] == 0 and not e.get("distill")]
    latest = environment.epoch_cpu(epochs[-1], starts) if epochs else "not recorded"
    same = ([e for e in dense if environment.epoch_cpu(e, starts) == latest]
            if latest != "not recorded" else [])
    return [e["seconds"] / e["steps"] for e in same or dense[-PACE_EPOCHS:]]


def _fill_missing_pace(rate: dict, dense: list[float]) -> str:
    """Estimates the pace of a kind (KD or cross-entropy) with no measurement from the other;
    returns the note that says how, or ""."""
    if rate[True] is None and rate[False] is not None and dense:
        # a KD step adds the teacher's forward pass, a third of a dense training step's
        # arithmetic (models/flops.py counts it so); the dense epochs on the latest CPU
        rate[True] = rate[False] + statistics.median(dense) / 3
        return ("KD runs estimated at the cross-entropy pace plus a third of the dense "
                "network's on the same CPU (the teacher's forward pass) until one finishes")
    if rate[True] is None and rate[False] is not None:
        rate[True] = rate[False]
        return "KD runs estimated at the cross-entropy pace until one finishes"
    if rate[False] is None and rate[True] is not None:
        rate[False] = rate[True]
        return "cross-entropy runs estimated at the KD pace"
    return ""


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
