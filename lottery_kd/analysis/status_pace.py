"""The paces lottery_kd.analysis.status estimates a study's remaining time with, from its
files: seconds per step of the latest whole epochs, KD and cross-entropy apart, on the CPU of
the latest epoch (epochs that read stored teacher logits set no pace), the dense network's for
a KD step's teacher before any KD epoch, and which steps of the KD runs still to train will run
the teacher where the study caches its logits (training.teacher_cache). No JAX: instant, safe
beside a running study."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from lottery_kd.runtime import environment
from lottery_kd.study import jsonlines
from lottery_kd.study.workdir import Workdir

PACE_EPOCHS = 20  # the lower quartile of 20 needs 5 undisturbed epochs; a median of 10, 6


def caches_teacher_logits(workdir: Path) -> bool:
    """Whether the study's latest start gives new KD runs cached teacher logits (its record in
    environment.jsonl; starts from before the cache did not)."""
    starts = jsonlines.scan(Workdir(workdir).environment)[0]
    return bool(starts) and starts[-1].get("teacher_logits") == "cached"


def teacher_steps(workdir: Path, left: list[dict], cached: bool
                  ) -> tuple[dict[tuple[int, str], int], int]:
    """Of each KD run still to train (`left`, in training order; the current one from its
    resume step), the steps that will run the teacher: all of a run without cached teacher
    logits (its own "teacher_logits" mode where it has one, a resumed run's, else `cached`),
    else those whose logits neither the store holds now (stored_steps; a fresh disk has none)
    nor an earlier caching run stores first; and how many of the runs' steps the store holds."""
    kd = {(r["level"], r["variant"]): range(r.get("at_step", r["start_step"]),
                                            r["start_step"] + r["steps"])
          for r in left if r["distill"]}  # in training order
    default = "cached" if cached else "in_step"
    caching = {(r["level"], r["variant"]): (r.get("teacher_logits") or default) == "cached"
               for r in left if r["distill"]}
    if not any(caching.values()):
        return {key: len(steps) for key, steps in kd.items()}, 0
    end = max((steps.stop for steps in kd.values()), default=0)
    stored = {s for s in stored_steps(workdir) if s < end}
    count, teacher = len(stored), {}
    for key, steps in kd.items():
        if not caching[key]:  # runs the teacher in its step and stores nothing
            teacher[key] = len(steps)
            continue
        teacher[key] = len(set(steps) - stored)
        stored.update(steps)
    return teacher, count


def stored_steps(workdir: Path) -> set[int]:
    """The steps whose teacher logits the study's store holds: the chunks (a .npy with its
    checksum .json) of its newest key folder (one per teacher; an older one is another
    teacher's); inside a chunk at the edge of what is stored, only the rows filled in (a run
    that started or stopped inside it left the rest NaN). No JAX, a few milliseconds."""
    folders = [f for f in Workdir(workdir).teacher_logits.glob("*") if f.is_dir()]
    if not folders:
        return set()
    chunks: dict[int, tuple[Path, int]] = {}
    for meta in max(folders, key=lambda f: f.stat().st_mtime).glob("chunk_*.json"):
        try:
            record = json.loads(meta.read_text())
            first, count = int(record["first_step"]), int(record["steps"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged chunk is computed again
        if meta.with_suffix(".npy").is_file() and 0 < count <= 1 << 16:
            chunks[first] = (meta.with_suffix(".npy"), count)
    steps: set[int] = set()
    for first, (data, count) in chunks.items():
        inside = first - count in chunks and first + count in chunks
        if inside:
            steps.update(range(first, first + count))
            continue
        try:  # an edge chunk: which rows hold logits (the first logit of each row)
            rows = np.load(data, mmap_mode="r")[:, 0, 0]
        except (OSError, ValueError, IndexError):
            continue
        steps.update(first + int(i) for i in np.flatnonzero(~np.isnan(rows)))
    return steps


def cache_readers(runs: list[dict]) -> set[tuple[int, str]]:
    """The KD runs of a plan whose every step an earlier KD run covers, by plan order alone: with
    cached teacher logits they likely read them all (unless the store was lost), so their
    finished rows give no pace of either kind."""
    readers, covered = set(), []
    for run in (r for r in runs if r["distill"]):
        first, end = run["start_step"], run["start_step"] + run["steps"]
        if any(a <= first and end <= b for a, b in covered):
            readers.add((run["level"], run["variant"]))
        covered.append((first, end))
    return readers


def epoch_paces(epochs: list[dict], steps_per_epoch: int, starts: list[dict], rate: dict,
                 source: dict) -> list[dict]:
    """Sets rate[kind] (and source[kind]) to the lower quartile of the seconds per step of the
    last PACE_EPOCHS epochs of each kind on the latest epoch's CPU, the pruned networks' alone
    once any has trained (every run still to come is one, and on the sparse kernels they run
    faster than the dense network); returns the whole epochs. Whole epochs only, where there
    are any: the partial first epoch after each (re)start also compiles, so a study restarted
    often would look slower than it trains."""
    epochs = ([e for e in epochs if e.get("steps") == steps_per_epoch]
              or [e for e in epochs if e.get("steps")])
    paced = [e for e in epochs if sets_pace(e)]
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


def sets_pace(epoch: dict) -> bool:
    """Whether an epoch's time is a pace: not one that read stored teacher logits (neither a KD
    step's pace nor a cross-entropy one's)."""
    return epoch.get("teacher") not in ("read", "mixed")


def cpu_change_note(epochs: list[dict], starts: list[dict]) -> str:
    """Says so where the latest start runs on another CPU than the latest whole epoch that
    sets a pace ran on (as epoch_paces picks them: not one that read stored teacher logits):
    the paces are the old CPU's (speeds differ 2x between machines) until such an epoch
    finishes on the new one."""
    epochs = [e for e in epochs if sets_pace(e)]
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


def dense_paces(epochs: list[dict], starts: list[dict]) -> list[float]:
    """The dense network's seconds per step, for a KD step's teacher: its epochs on the CPU of
    the study's latest epoch (environment.jsonl says which), else its last PACE_EPOCHS epochs,
    the nearest in time. Speeds differ between machines by 2x or more, and the cross-entropy
    pace it is added to is the latest epochs'."""
    dense = [e for e in epochs if e["level"] == 0 and not e.get("distill")]
    latest = environment.epoch_cpu(epochs[-1], starts) if epochs else "not recorded"
    same = ([e for e in dense if environment.epoch_cpu(e, starts) == latest]
            if latest != "not recorded" else [])
    return [e["seconds"] / e["steps"] for e in same or dense[-PACE_EPOCHS:]]


def fill_missing_pace(rate: dict, dense: list[float]) -> str:
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
