"""The IMP driver: levels x retrain variants -> results.jsonl, summary.md, plot, snapshots.

    init -> dense training (snapshot "rewind" at step k) -> level 0 final = the teacher
    for level L = 1..N, for each variant V:
        masks_L = prune(V's level L-1 final, V's level L-1 masks, fraction)      [iterative]
               or prune(dense final, all-true, 1 - (1 - fraction)^L)              [one-shot]
        weights <- V's start (init | rewind | previous final | fresh) * masks_L
        train with V's schedule and loss -> snapshot "level_L_V" -> one results row

Re-running the same command skips every (level, variant) whose row and snapshot exist; a different
config in the same workdir is refused, naming the keys that differ.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np

from lottery_kd import config as config_lib
from lottery_kd.config import identity, protocols
from lottery_kd.config.identity import (ADDED_KEYS, COSMETIC_KEYS,  # noqa: F401  (re-exported)
                                        canonical_settings, config_digest, config_to_dict)
from lottery_kd import masks as masks_lib, optim, pruning, results, variants as variants_lib
from lottery_kd.checkpoints import CheckpointError, ResumeStore, SnapshotStore
from lottery_kd.environment import read_starts, record_start
from lottery_kd.kernels.build import NativeKernelError
from lottery_kd.kernels.conv3x3 import native_enabled
from lottery_kd.models import get_model
from lottery_kd.tensorboard import ScalarWriter
from lottery_kd.data.augment import normalize
from lottery_kd.dynamic import MaskUpdate
from lottery_kd.sparse_init import sparse_aware_init
from lottery_kd.data.inputs import input_data_from_config
from lottery_kd.parallel import DataParallel
from lottery_kd.workdir_lock import WorkdirBusy, WorkdirLock
from lottery_kd.train import (Distillation, NonFiniteLossError, Progress, Trainer,
                              TrainingInterrupted, init_variables)

PyTree = Any
DENSE = "dense"


class WorkdirConfigMismatch(ValueError):
    """The workdir holds results made with a different config."""


class WorkdirError(OSError):
    """The workdir cannot be created or written."""


def _resume_flags(saved: dict, current: dict) -> str:
    """The --config flags that turn the `current` config into the `saved` one (repeated until
    no key differs: setting one key can bring out another, e.g. a validation split that only
    matters once data.validation_size is set back)."""
    saved_flat, current_flat = identity.flatten(saved), identity.flatten(current)
    chosen: dict[str, Any] = {}
    for _ in range(10):
        merged = {**current_flat, **chosen}
        keys = identity.differing_keys(saved, identity.unflatten(merged))
        if not keys:
            break
        chosen.update({key: identity.setting(saved_flat, key) for key in keys})
    return " ".join(shlex.quote(f"--config.{key}={'' if value is None else value}")
                    for key, value in sorted(chosen.items()))


def check_orphaned_results(workdir: Path, config: Any) -> None:
    """With config.json missing, refuse a workdir whose snapshots were made with another config
    (their fingerprint holds its digest), or whose rows cannot be checked at all: else another
    config would adopt them as its own."""
    from lottery_kd.checkpoints import read_fingerprint
    path = workdir / "config.json"
    directory = workdir / "checkpoints" / "snapshots"
    digest = config_digest(config)
    snapshots = sorted(directory.iterdir()) if directory.is_dir() else []
    for snapshot in snapshots:
        stored = (read_fingerprint(snapshot) or {}).get("config_digest")
        if stored is not None and stored != digest:
            raise WorkdirConfigMismatch(
                f"{path} is missing, and the snapshots in {directory} were made with another "
                f"config (digest {stored}, this command's {digest}); restore config.json (or "
                "rerun with the settings that made them), or use another --workdir")
    rows = results.read_rows(workdir / "results.jsonl")
    if rows and not snapshots:
        raise WorkdirConfigMismatch(
            f"{path} is missing and {workdir / 'results.jsonl'} holds {len(rows)} row(s) with "
            "no snapshot to tell which config made them; restore config.json, or move "
            "results.jsonl away, or use another --workdir")


def prepare_workdir(workdir: Path, config: Any, *, write: bool = True) -> None:
    """Create the workdir and write config.json (`write`: the main process only), or check it
    equals the saved one. An unusable workdir is refused before anything is computed."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write_probe.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise WorkdirError(f"workdir {workdir} cannot be written ({error.strerror or error}); "
                           "choose another --workdir or fix its permissions or free space") \
            from None
    path = workdir / "config.json"
    current = identity.config_to_dict(config)
    if path.exists():
        saved = identity.read_saved(path)
        differing = identity.differing_keys(saved, current)
        if differing:
            saved_flat = identity.flatten(saved)
            now_flat = identity.flatten(current)
            lines = [f"  {k}: {identity.setting(saved_flat, k)!r} in the workdir, "
                     f"{identity.setting(now_flat, k)!r} now" for k in differing]
            raise WorkdirConfigMismatch(
                f"{workdir} holds a run with a different config:\n" + "\n".join(lines) +
                "\nUse another --workdir, or rerun with the saved settings to resume: "
                + _resume_flags(saved, current))
        return
    check_orphaned_results(workdir, config)
    if not write:
        return
    temporary = path.with_name("config.json.tmp")
    temporary.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


class TrainingFailed(RuntimeError):
    """A training run of the study failed (non-finite loss); no result row was written."""


def _derived_key(seed: int, *tags: Any) -> jax.Array:
    """A PRNG key that depends only on (seed, tags): stable across runs and resumes."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32("/".join(map(str, tags)).encode()))


def snapshot_name(level: int, variant: str) -> str:
    """The snapshot (and TensorBoard run) name of one training run: level_<L>_<variant>."""
    return f"level_{level}_{variant}"


def check_batch_norm_groups(workdir: Path, batch_norm: str, device_count: int) -> None:
    """Refuse to go on with per-device BatchNorm on another device count than the study's.

    With parallel.batch_norm=per_device the statistics are those of each device's slice of the
    batch, so the device count is part of the computation (unlike global BatchNorm, where 1 and
    4 devices train the same network). Every start records its count in environment.jsonl;
    resuming, or analysing, on a different count would mix two computations in one study.
    """
    if batch_norm != "per_device":
        return
    for start in read_starts(workdir):
        before = start.get("batch_norm_groups", start.get("device_count"))
        if before is not None and before != device_count:
            raise config_lib.ConfigError(
                f"invalid config:\n  parallel.batch_norm='per_device': {workdir} was trained "
                f"with BatchNorm statistics per device over {before} devices (environment.jsonl,"
                f" {start.get('time', 'an earlier start')}); this process has {device_count}. "
                f"The groups change the computation: run on {before} devices (on CPU, "
                f"--config.parallel.num_cpu_devices={before}), or use another --workdir")


def check_workdir_path(workdir: str | os.PathLike) -> None:
    """ConfigError for a workdir that can never hold a study: a URL, or an existing file."""
    if isinstance(workdir, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", workdir):
        raise config_lib.ConfigError(
            f"invalid config:\n  --workdir={workdir!r}: a URL; the workdir must be a "
            "local or shared-filesystem path visible to every process (data.tfds_data_dir "
            "may be a gs:// URL)")
    if Path(workdir).exists() and not Path(workdir).is_dir():
        raise config_lib.ConfigError(f"invalid config:\n  --workdir={str(workdir)!r} is a file, "
                                     "not a folder: choose another --workdir")


@contextlib.contextmanager
def study_lock(workdir: str | os.PathLike) -> Iterator[None]:
    """Hold the workdir's lock (lottery_kd.workdir_lock) for the block: process 0 takes it for
    the whole run, and every process of a pod stops together if another run holds it."""
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
    busy = ""
    if lock is not None:
        try:
            lock.acquire()
        except WorkdirBusy as error:
            busy = str(error)
        except OSError as error:
            raise WorkdirError(f"workdir {workdir} cannot be written ({error.strerror or error});"
                               " choose another --workdir or fix its permissions or free "
                               "space") from None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        if int(multihost_utils.broadcast_one_to_all(np.int32(bool(busy)))):
            busy = busy or f"process 0 found {workdir} locked by another run of this study"
    if busy:
        raise WorkdirBusy(busy)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


class LotteryRun:
    """One experiment: its config, data, model, compiled trainer and snapshot store."""

    def __init__(self, config: Any, workdir: str | os.PathLike, *, log=print,
                 stop_requested: Callable[[], bool] = lambda: False, record: bool = True):
        """`record=False` (the analysis tools) leaves the study's plan.json and
        environment.jsonl alone: those describe the study's own (re)starts."""
        config_lib.validate(config)
        check_workdir_path(workdir)
        self.config = config
        self.workdir = Path(workdir)
        self.log = log
        self.stop_requested = stop_requested
        self.record = record
        data_cfg = config.data
        self.parallel = DataParallel.create()
        try:
            self.parallel.check_batch_size(config.train.batch_size, "train.batch_size")
        except ValueError as error:
            raise config_lib.ConfigError(f"invalid config:\n  {error}") from None
        self.data = input_data_from_config(data_cfg, seed=config.seed,
                                           device_count=self.parallel.device_count)
        self.plan = config_lib.plan_steps(config, self.data.train.num_examples)
        self.variants = [variants_lib.get(name)
                         for name in config_lib.parse_names(config.lottery.variants)]
        try:  # before the workdir is written: a conv_impl this machine cannot run is bad input
            self.model = get_model(config.model.name, self.data.num_classes,
                                   basis=config.model.basis, basis_seed=config.seed,
                                   conv_impl=config.model.conv_impl,
                                   norm_impl=config.model.norm_impl)
        except NativeKernelError as error:
            raise config_lib.ConfigError(f"invalid config:\n  {error}") from None
        if record:  # the analysis tools read the study as it is and write nothing into it
            prepare_workdir(self.workdir, config, write=self.parallel.is_main)
        check_batch_norm_groups(self.workdir, config.parallel.batch_norm,
                                self.parallel.device_count)
        if not self.parallel.is_main:
            self.log = lambda *_: None
        self.scope = config.prune.scope
        self.trainer = self.make_trainer(self.data)
        self.schedule = optim.step_schedule(config.train.lr, self.plan.milestone_steps,
                                            decay=config.train.lr_decay,
                                            warmup_steps=self.plan.warmup_steps)
        self.fingerprint = {"model": config.model.name, "config_digest": config_digest(config)}
        self.snapshots = SnapshotStore(self.workdir / "checkpoints" / "snapshots",
                                       self.fingerprint)
        self.results_path = self.workdir / "results.jsonl"
        self._finals: dict[str, PyTree] = {}
        if record and self.parallel.is_main:  # what lottery_kd.status reads to say how far
            results.set_aside_damaged(self.workdir, self.log)  # keep every valid row
            results.write_atomic(self.workdir / "plan.json", json.dumps(
                {"steps_per_epoch": self.plan.steps_per_epoch,
                 "total_steps": self.plan.total_steps, "rewind_step": self.plan.rewind_step,
                 "runs": self.planned_runs()}, indent=1) + "\n")
            record_start(self.workdir, conv_impl=config.model.conv_impl,
                         native_conv_available=native_enabled(config.model.conv_impl),
                         batch_norm_groups=self.parallel.batch_norm_groups(
                             config.parallel.batch_norm))
        self.log(f"{config.model.name} on {data_cfg.name}: train {self.data.train.num_examples}, "
                 f"val {self.data.val.num_examples if self.data.val else 0}, "
                 f"test {self.data.test.num_examples}; "
                 f"{self.plan.steps_per_epoch} steps/epoch, {self.plan.total_steps} steps, "
                 f"rewind step {self.plan.rewind_step}, LR drops at steps "
                 f"{list(self.plan.milestone_steps)}; {self.parallel.device_count} device(s) in "
                 f"{self.parallel.process_count} process(es); workdir {self.workdir}\n"
                 f"{protocols.describe(config)}")

    def make_trainer(self, data) -> Trainer:
        """A trainer with this study's model, optimizer, distillation and device layout, over
        `data` (the study's own, or another order or subset of it for the analysis tools)."""
        config, kd = self.config, self.config.kd
        return Trainer(self.model, data, batch_size=config.train.batch_size,
                       momentum=config.train.momentum, weight_decay=config.train.weight_decay,
                       distillation=Distillation(kd.temperature, kd.alpha, kd.reduction),
                       parallel=self.parallel, batch_norm=config.parallel.batch_norm)

    @classmethod
    def from_workdir(cls, workdir: str | os.PathLike, *, log=print) -> "LotteryRun":
        """The study in `workdir`, rebuilt from its config.json (for analysis tools). Keys added
        since the study began read as their values from before (ADDED_KEYS, as on resume), or
        else as their defaults; the study's plan.json and environment.jsonl are left alone."""
        return cls(identity.load_saved(workdir), workdir, log=log, record=False)

    # ---- snapshots -------------------------------------------------------------------------
    def _template(self) -> PyTree:
        params, batch_stats = jax.eval_shape(
            lambda key: init_variables(self.model, key, self.data.image_shape),
            jax.random.key(0))
        masks = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, np.bool_), params)
        return {"params": params, "batch_stats": batch_stats, "masks": masks}

    def _snapshot(self, state_params, batch_stats, masks) -> PyTree:
        return {"params": state_params, "batch_stats": batch_stats, "masks": masks}

    def _load(self, name: str) -> PyTree:
        if name == "init" and self.record and not self.snapshots.exists(name):
            return self.init_snapshot()  # a pure function of the seed: made again if lost
        if name not in self._finals:
            self._finals[name] = self.snapshots.restore(name, self._template(),
                                                        self.parallel.replicated)
        return self._finals[name]

    def load_existing(self, name: str, what: str) -> PyTree:
        """A snapshot the study wrote, for the analysis tools: a ValueError naming `what` (the
        option that asked for it) and the tickets there if it is missing, never a new one."""
        if not self.snapshots.exists(name):
            tickets = [n for n in self.snapshots.names()
                       if n.startswith("level_") and n != snapshot_name(0, DENSE)]
            raise ValueError(f"{what} {name!r}: no such snapshot in {self.workdir} (tickets "
                             f"there: {', '.join(tickets) or 'none yet: run the study first'})")
        return self._load(name)

    def init_snapshot(self) -> PyTree:
        """The study's initial weights (step 0), created from the seed on first use."""
        if not self.snapshots.exists("init"):
            params, batch_stats = init_variables(self.model, jax.random.key(self.config.seed),
                                                 self.data.image_shape)
            self.snapshots.save("init", self.parallel.replicate(self._snapshot(
                params, batch_stats, masks_lib.create(params, self.scope))))
        return self._load("init")

    # ---- training --------------------------------------------------------------------------
    def _train(self, level: int, variant_name: str, start: PyTree, masks: PyTree, *,
               start_step: int, num_steps: int, schedule, distill: bool, on_step=None,
               mask_update: Optional[MaskUpdate] = None):
        tag = snapshot_name(level, variant_name)
        main = self.parallel.is_main
        masks = self.parallel.replicate(masks)
        writer = (ScalarWriter(self.workdir / "tensorboard" / tag)
                  if self.config.log.tensorboard and main else None)
        sparsity = masks_lib.sparsity(masks, self.scope)

        def log_scalars(step: int, row: dict) -> None:
            if writer is not None:
                writer.scalars(step, {**{k: v for k, v in row.items() if k != "distill"},
                                      "sparsity": sparsity})
            if main and "epoch_seconds" in row:  # the pace lottery_kd.status estimates with
                results.append_epoch_time(self.workdir, {
                    "level": level, "variant": variant_name, "step": step,
                    "distill": row["distill"], "steps": row["epoch_steps"],
                    "seconds": round(row["epoch_seconds"], 3)})

        progress = (Progress.for_mode(f"[level {level} {variant_name}]",
                                      self.config.log.progress) if main else None)
        state = self.trainer.init_state(start["params"], start["batch_stats"], masks, start_step)
        teacher = self.teacher() if distill else None
        resume = ResumeStore(self.workdir / "checkpoints" / "resume" / tag,
                             keep=self.config.checkpoint.keep, fingerprint=self.fingerprint,
                             log=self.log)
        try:
            fit = self.trainer.fit(state, masks, num_steps=num_steps, schedule=schedule,
                                   teacher=teacher, kd_stop_step=self.plan.kd_stop_step,
                                   on_step=on_step or {}, progress=progress,
                                   log_scalars=log_scalars, resume=resume,
                                   checkpoint_every=self.config.checkpoint.every_steps,
                                   stop_requested=self.stop_requested,
                                   mask_update=mask_update)
        except NonFiniteLossError as error:
            raise TrainingFailed(
                f"level {level}, variant {variant_name}: non-finite loss at global step "
                f"{error.step} ({error}). No result row was written; the last good resume "
                f"checkpoint is kept in {resume.directory}.") from None
        except TrainingInterrupted as stop:
            raise TrainingInterrupted(stop.step, f"level {level}, variant {variant_name}") \
                from None
        finally:
            if writer is not None:
                writer.close()
            if progress is not None:
                progress.close()
        masks = fit.masks  # changed during training by a dynamic sparse method
        snapshot = self._snapshot(fit.state.params, fit.state.batch_stats, masks)
        self.snapshots.save(tag, snapshot)
        self._finals[tag] = snapshot
        remaining, total = masks_lib.count(masks, self.scope)
        row = {"level": level, "variant": variant_name, "sparsity": sparsity,
               "remaining_weights": remaining, "prunable_weights": total,
               "test_accuracy": fit.test_accuracy, "best_val_accuracy": fit.best_val_accuracy,
               "test_accuracy_at_best_val": fit.test_accuracy_at_best_val,
               "best_val_epoch": fit.best_val_epoch, "epochs": fit.epochs, "steps": fit.steps,
               "start_step": start_step, "distill": distill,
               "layer_counts": {name: list(counts) for name, counts in
                                masks_lib.layer_counts(masks, self.scope).items()},
               "seconds": round(fit.seconds, 2)}
        if main:
            results.append_row(self.results_path, row)
            results.write_summary(self.workdir, results.read_rows(self.results_path),
                                  f"{self.config.model.name} on {self.config.data.name}",
                                  protocols.describe(self.config))
        self.parallel.barrier(f"row {tag}")
        if main:
            resume.delete_all()  # the final snapshot and the row now stand for this run
        else:
            resume.close()
        self.log(f"[level {level} {variant_name}] sparsity {100 * sparsity:.2f}% test "
                 f"{100 * fit.test_accuracy:.2f}% ({fit.seconds:.0f}s)")
        return row

    def teacher(self) -> PyTree:
        """The KD teacher: the trained dense network's parameters and BatchNorm statistics."""
        dense = self._load(snapshot_name(0, DENSE))
        return {"params": dense["params"], "batch_stats": dense["batch_stats"]}

    def _done(self) -> set[tuple[int, str]]:
        return {(r["level"], r["variant"]) for r in results.read_rows(self.results_path)
                if self.snapshots.exists(snapshot_name(r["level"], r["variant"]))}

    def run_dense(self) -> None:
        """Train (or resume) the dense network, snapshotting its weights at the rewind step."""
        if (0, DENSE) in self._done() and self.snapshots.exists("rewind"):
            return
        init = self.init_snapshot()
        rewind_step = self.plan.rewind_step

        def save_rewind(state) -> None:
            self.snapshots.save("rewind", self._snapshot(state.params, state.batch_stats,
                                                         init["masks"]))
        on_step = {rewind_step: save_rewind} if rewind_step < self.plan.total_steps else {}
        self._train(0, DENSE, init, init["masks"], start_step=0,
                    num_steps=self.plan.total_steps, schedule=self.schedule, distill=False,
                    on_step=on_step)
        if self.snapshots.exists("rewind"):
            return
        if rewind_step < self.plan.total_steps:  # saved before step k, so it was lost since
            raise CheckpointError(
                f"snapshot 'rewind' (the dense weights at step {rewind_step}) is missing from "
                f"{self.snapshots.directory}, but the dense run has passed that step; restore "
                "it, or move checkpoints/snapshots/level_0_dense and "
                "checkpoints/resume/level_0_dense away to retrain the dense network")
        self.snapshots.save("rewind", self._load(snapshot_name(0, DENSE)))  # unused: past the end

    def masks_for(self, level: int, variant: str) -> PyTree:
        """The level's mask for `variant` (pure in the snapshots it reads, so safe to recompute).

        The chain's masks come from the previous level (iterative) or the dense network
        (one-shot); the weights scored are that run's final weights, or the init snapshot with
        prune.source='init' (pruning at initialisation: SNIP, GraSP, SynFlow, ...).
        """
        prune = self.config.prune
        method = pruning.get(prune.method)
        if prune.schedule == "oneshot":
            chain = self._load(snapshot_name(0, DENSE))
            fraction = 1.0 - (1.0 - prune.fraction) ** level
            rng = _derived_key(self.config.seed, "prune", level)
        else:
            chain = self._load(snapshot_name(level - 1, DENSE if level == 1 else variant))
            fraction = prune.fraction
            rng = _derived_key(self.config.seed, "prune", level, variant)
        scored = self._load("init") if prune.source == "init" else chain
        masks = method(scored["params"], chain["masks"], fraction, rng=rng, scope=self.scope,
                       **self.prune_context(scored, with_batch=pruning.uses_data(prune.method)))
        pruning.check_result(prune.method, masks, chain["masks"], scored["params"], self.scope)
        return masks

    def prune_context(self, scored: PyTree, *, with_batch: bool) -> dict:
        """What criteria may need: the model, BatchNorm statistics, the input shape, the pruning
        settings, and (`with_batch`) the normalised training batch of step 0."""
        prune = self.config.prune
        context = {"model": self.model, "batch_stats": scored["batch_stats"],
                   "input_shape": tuple(self.data.image_shape),
                   "distribution": prune.distribution, "synflow_rounds": prune.synflow_rounds,
                   "grasp_temperature": prune.grasp_temperature}
        if with_batch:
            images, labels = self.trainer.device_batch(0)
            context["batch"] = (normalize(images, self.data.mean, self.data.std), labels)
        return context

    def run_variant(self, level: int, variant: variants_lib.RetrainVariant) -> None:
        """Train (or resume) one retrain variant at one level: its mask, start and schedule."""
        masks = self.masks_for(level, variant.name)
        total = self.plan.total_steps
        if variant.weights == "init":
            start = self._load("init")
        elif variant.weights == "rewind":
            start = self._load("rewind")
        elif variant.weights == "previous":
            oneshot = self.config.prune.schedule == "oneshot"
            previous_level = 0 if level == 1 or oneshot else level - 1
            start = self._load(snapshot_name(previous_level,
                                             DENSE if previous_level == 0 else variant.name))
        elif variant.weights == "sparse_init":
            init = self._load("init")
            start = {"params": sparse_aware_init(
                init["params"], masks, _derived_key(self.config.seed, "sparse_init", level,
                                                    variant.name), scope=self.scope),
                "batch_stats": init["batch_stats"]}
        else:  # reinit
            params, batch_stats = init_variables(
                self.model, _derived_key(self.config.seed, "reinit", level, variant.name),
                self.data.image_shape)
            start = {"params": params, "batch_stats": batch_stats}
        start_step, num_steps = self.steps_of(variant)
        schedule = self.schedule
        if variant.schedule == "final":  # the whole budget at the final learning rate
            schedule = optim.constant_schedule(float(self.schedule(total - 1)))
        self._train(level, variant.name, start, masks, start_step=start_step,
                    num_steps=num_steps, schedule=schedule, distill=variant.distill)

    def steps_of(self, variant: variants_lib.RetrainVariant) -> tuple[int, int]:
        """(start step, number of steps) of a variant's retraining: its schedule's start."""
        if variant.schedule == "rewind":
            return self.plan.rewind_step, self.plan.total_steps - self.plan.rewind_step
        return 0, self.plan.total_steps  # "zero", and "final" (T steps at the final LR)

    def planned_runs(self) -> list[dict]:
        """Every training run of the study in order: level, variant, start step, steps, distill."""
        total = self.plan.total_steps
        runs = [{"level": 0, "variant": DENSE, "start_step": 0, "steps": total, "distill": False}]
        if self.config.dynamic.method:
            return runs + [{"level": 1, "variant": self.dynamic_name(), "start_step": 0,
                            "steps": total, "distill": bool(self.config.dynamic.distill)}]
        for level in config_lib.pruning_levels(self.config.prune):
            for variant in self.variants:
                start_step, steps = self.steps_of(variant)
                runs.append({"level": level, "variant": variant.name, "start_step": start_step,
                             "steps": steps, "distill": variant.distill})
        return runs

    def dynamic_name(self) -> str:
        """The row name of a dynamic sparse run, e.g. rigl_kd_sparse_init."""
        dyn = self.config.dynamic
        return (f"{dyn.method}{'_kd' if dyn.distill else ''}"
                f"{'_sparse_init' if dyn.init == 'sparse' else ''}")

    def run_dynamic(self) -> None:
        """Dynamic sparse training (RigL, SET, ...) from init at dynamic.sparsity, its masks
        updated during training at a constant count; with dynamic.distill, KD from the dense
        network. One row: level 1, variant e.g. 'rigl_kd'."""
        dyn, name = self.config.dynamic, self.dynamic_name()
        if (1, name) in self._done():
            return
        init = self._load("init")
        masks = pruning.get("random")(init["params"], init["masks"], dyn.sparsity,
                                      rng=_derived_key(self.config.seed, "dynamic", "masks"),
                                      scope=self.scope, distribution=dyn.distribution)
        start = init
        if dyn.init == "sparse":
            start = {"params": sparse_aware_init(init["params"], masks, _derived_key(
                self.config.seed, "dynamic", "sparse_init"), scope=self.scope),
                "batch_stats": init["batch_stats"]}
        total = self.plan.total_steps
        update = MaskUpdate(dyn.method, dyn.delta_t, dyn.alpha,
                            end_step=int(dyn.end_fraction * total), seed=self.config.seed,
                            scope=self.scope)
        self._train(1, name, start, masks, start_step=0, num_steps=total,
                    schedule=self.schedule, distill=dyn.distill, mask_update=update)

    def _announce(self, level: int, variant: str) -> None:
        planned = [(r["level"], r["variant"]) for r in self.planned_runs()]
        done = self._done()
        if (level, variant) not in done:
            self.log(f"[study] run {planned.index((level, variant)) + 1} of {len(planned)}: "
                     f"level {level} {variant} ({sum(p in done for p in planned)} done; "
                     f"python -m lottery_kd.status {self.workdir} estimates the rest)")

    def _stop_before(self, level: int, variant: str) -> None:
        """Honour a stop request between runs (all processes agree): never start the next."""
        stop = self.stop_requested()
        if self.parallel.process_count > 1:
            stop = self.parallel.any_process(stop)
        if stop:
            raise TrainingInterrupted(None, f"before level {level} {variant}")

    def run(self) -> list[dict]:
        """Run (or resume) the whole study; returns all result rows."""
        self._announce(0, DENSE)
        self.run_dense()
        if self.config.dynamic.method:
            self._stop_before(1, self.dynamic_name())
            self._announce(1, self.dynamic_name())
            self.run_dynamic()
        else:
            for level in config_lib.pruning_levels(self.config.prune):
                done = self._done()
                for variant in self.variants:
                    if (level, variant.name) not in done:
                        self._stop_before(level, variant.name)
                        self._announce(level, variant.name)
                        self.run_variant(level, variant)
        rows = results.read_rows(self.results_path)
        if self.parallel.is_main:
            results.write_summary(self.workdir, rows,
                                  f"{self.config.model.name} on {self.config.data.name}",
                                  protocols.describe(self.config))
        self.snapshots.close()
        return rows


def run(config: Any, workdir: str | os.PathLike, *, log=print,
        stop_requested: Callable[[], bool] = lambda: False) -> list[dict]:
    """Validate `config`, then run or resume the study in `workdir`, holding its lock: a second
    run of the same workdir raises WorkdirBusy before anything is computed."""
    config_lib.validate(config)
    check_workdir_path(workdir)
    with study_lock(workdir):
        return LotteryRun(config, workdir, log=log, stop_requested=stop_requested).run()
