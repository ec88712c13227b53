"""SIGKILL at random moments, then the same command again: the study ends exactly as an
uninterrupted one (results.jsonl equal but for timing, final params and masks bitwise equal).

Slow (about 10 minutes on 2 cores): `python -m pytest -q -m slow tests/test_kill_resume.py`.
KILL_TRIALS (default 20) and KILL_SEED (default 0) in the environment change the trial count and
the random kill moments. Each trial kills a fresh run once at a moment drawn uniformly over the
uninterrupted run's wall time (process start-up, training, checkpoint and snapshot writes,
pruning, result rows), then reruns the same command to the end and compares.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import quickstart
from lottery_kd.study import lottery, results
from tests.conftest import REPO

pytestmark = pytest.mark.slow

FLAGS = ["--config.train.epochs=3", "--config.prune.levels=2", "--config.prune.first_level=1",
         "--config.lottery.variants=lt,weight_rewind,kd", "--config.lottery.rewind=1ep",
         "--config.checkpoint.every_steps=7", "--config.log.progress=lines",
         "--config.log.tensorboard=True"]


def _command(workdir):
    return [sys.executable, "-m", "experiments.quickstart", f"--workdir={workdir}", *FLAGS]


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _config():
    config = quickstart.get_config()
    config.train.epochs, config.prune.levels, config.prune.first_level = 3, 2, 1
    config.lottery.variants, config.lottery.rewind = "lt,weight_rewind,kd", "1ep"
    config.checkpoint.every_steps = 7
    config.log.progress, config.log.tensorboard = "lines", True
    return config


def _final_state(workdir):
    """Rows without timing, and every final snapshot's params, BatchNorm statistics and masks."""
    rows = results.read_rows(workdir / "results.jsonl")
    run = lottery.LotteryRun(_config(), workdir, log=lambda *_: None)
    snapshots = {}
    for row in rows:
        name = lottery.snapshot_name(row["level"], row["variant"])
        snapshots[name] = jax.device_get(run.snapshots.restore(name, run.snapshot_template()))
    run.snapshots.close()
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows], snapshots


def _equal_snapshots(a, b):
    if a.keys() != b.keys():
        return False
    return all(np.array_equal(x, y) for name in a
               for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(b[name])))


def test_sigkill_at_random_moments_then_resume_ends_as_an_uninterrupted_run(tmp_path):
    trials = int(os.environ.get("KILL_TRIALS", "20"))
    rng = random.Random(int(os.environ.get("KILL_SEED", "0")))
    began = time.perf_counter()
    done = subprocess.run(_command(tmp_path / "reference"), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    wall = time.perf_counter() - began
    expected_rows, expected_snapshots = _final_state(tmp_path / "reference")
    assert len(expected_rows) == 1 + 2 * 3

    survived, report = 0, []
    for trial in range(trials):
        workdir = tmp_path / f"trial_{trial}"
        kill_after = rng.uniform(0.05, 1.0) * wall
        process = subprocess.Popen(_command(workdir), cwd=REPO, env=_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=kill_after)
            killed = False  # it finished before the kill moment
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed = True
        rows_at_kill = len(results.read_rows(workdir / "results.jsonl"))
        again = subprocess.run(_command(workdir), cwd=REPO, env=_env(), capture_output=True,
                               text=True, timeout=900)
        ok = again.returncode == 0
        if ok:
            rows, snapshots = _final_state(workdir)
            ok = rows == expected_rows and _equal_snapshots(snapshots, expected_snapshots)
        survived += ok
        report.append(f"trial {trial}: kill at {kill_after:.1f}s ({'killed' if killed else 'done'}"
                      f", {rows_at_kill} rows) -> {'same results' if ok else 'DIFFERENT'}"
                      + ("" if again.returncode == 0 else f" rc={again.returncode} "
                         f"{again.stderr[-1500:]}"))
        if ok:
            shutil.rmtree(workdir)
    print(f"\nuninterrupted run: {wall:.1f}s; trials survived: {survived}/{trials}")
    print("\n".join(report))
    assert survived == trials, "\n".join(report)
