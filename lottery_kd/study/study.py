"""A study: one config in one workdir, with its data, model, trainer, snapshots and rows.

`Study` holds what every tool that opens a workdir needs: the validated config, the workdir's
paths (study.workdir), the devices, the data, the model, a compiled `Trainer`, the snapshot store
with a bounded cache, and `_train`, which runs one training run and records its snapshot and
result row. The IMP driver (study.lottery.LotteryRun) adds what a lottery-ticket study does
with it; the analysis tools (lmc, bootstrap) open a finished study with `Study.from_workdir`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import numpy as np

from lottery_kd import config as config_lib
from lottery_kd.config import identity, protocols
from lottery_kd.config.identity import config_digest
from lottery_kd.data.inputs import InputData, input_data_from_config
from lottery_kd.kernels.build import NativeKernelError
from lottery_kd.kernels.conv3x3 import (DENSE_TWIN_IMPL, SPARSE_IMPLS, execution_record,
                                      native_enabled, path_change_note, resumed_conv_impl)
from lottery_kd.models import CONV_IMPL_MODELS, flops as flops_lib, get_model
from lottery_kd.runtime.environment import read_starts, record_start
from lottery_kd.runtime.parallel import DataParallel
from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.sparsity.dynamic import MaskSchedule
from lottery_kd.study import results, run_row, variants as variants_lib
from lottery_kd.study.checkpoint_meta import latest_fingerprint, resumed_teacher_logits
from lottery_kd.study.checkpoints import SnapshotCache, SnapshotStore
from lottery_kd.study.variants import DENSE, snapshot_name
from lottery_kd.study.workdir import Workdir
from lottery_kd.study.workdir_checks import (check_batch_norm_groups, check_workdir_path,
                                             prepare_workdir)
from lottery_kd.training import optim, precision as precision_lib
from lottery_kd.training import teacher_cache as teacher_cache_lib
from lottery_kd.training.errors import NonFiniteLossError, TrainingInterrupted
from lottery_kd.training.run_setup import RunOutputs
from lottery_kd.training.steps import Distillation, init_variables
from lottery_kd.training.trainer import Trainer

PyTree = Any


class TrainingFailed(RuntimeError):
    """A training run of the study failed (non-finite loss); no result row was written."""


class Study:
    """One experiment: its config, data, model, compiled trainer and snapshot store."""

    def __init__(self, config: Any, workdir: str | os.PathLike, *, log=print,
                 stop_requested: Callable[[], bool] = lambda: False, record: bool = True):
        """`record=False` (the analysis tools) leaves the study's plan.json and
        environment.jsonl alone: those describe the study's own (re)starts."""
        config_lib.validate(config)
        check_workdir_path(workdir)
        self.config = config
        self.paths = Workdir(workdir)
        self.workdir = self.paths.root
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
        self.model, self.dense_model = self._models(config, config.model.conv_impl)
        if record:  # the analysis tools read the study as it is and write nothing into it
            prepare_workdir(self.workdir, config, write=self.parallel.is_main)
        check_batch_norm_groups(self.workdir, config.parallel.batch_norm,
                                self.parallel.device_count)
        if not self.parallel.is_main:
            self.log = lambda *_: None
        self.scope = config.prune.scope
        try:  # batch sizes the device layout cannot split (data.eval_batch_size on ImageNet)
            self.trainer = self.make_trainer(self.data)
        except ValueError as error:
            raise config_lib.ConfigError(f"invalid config:\n  {error}") from None
        self.schedule = optim.step_schedule(config.train.lr, self.plan.milestone_steps,
                                            decay=config.train.lr_decay,
                                            warmup_steps=self.plan.warmup_steps)
        saved = identity.read_saved(self.paths.config) if self.paths.config.is_file() else None
        self.fingerprint = {"model": config.model.name,
                            "config_digest": config_digest(config, saved)}
        self.snapshots = SnapshotStore(self.paths.snapshots, self.fingerprint)
        self.results_path = self.paths.results
        self._finals = SnapshotCache(size=4)  # bounded: not every snapshot of the study
        self._layer_flops: Optional[dict[str, int]] = None  # models.flops, on first use
        if record and self.parallel.is_main:
            self._record_start()
        rewind = "" if config.dynamic.method else f"rewind step {self.plan.rewind_step}, "
        self.log(f"{config.model.name} on {data_cfg.name}: train {self.data.train.num_examples}, "
                 f"val {self.data.val.num_examples if self.data.val else 0}, "
                 f"test {self.data.test.num_examples}; "
                 f"{self.plan.steps_per_epoch} steps/epoch, {self.plan.total_steps} steps, "
                 f"{rewind}LR drops at steps "
                 f"{list(self.plan.milestone_steps)}; {self.parallel.device_count} device(s) in "
                 f"{self.parallel.process_count} process(es); workdir {self.workdir}\n"
                 f"{protocols.describe(config)}")

    def _record_start(self) -> None:
        """Set damaged rows aside (keeping every valid one), write plan.json (what
        lottery_kd.analysis.status measures against) and this start's environment record."""
        config = self.config
        results.set_aside_damaged(self.workdir, self.log)
        results.write_atomic(self.paths.plan, json.dumps(
            {"steps_per_epoch": self.plan.steps_per_epoch,
             "total_steps": self.plan.total_steps, "rewind_step": self.plan.rewind_step,
             "runs": self.planned_runs()}, indent=1) + "\n")
        conv_impl = precision_lib.conv_impl_for(config.model.conv_impl, config.train.precision)
        record_start(self.workdir, conv_impl=config.model.conv_impl,
                     native_conv_available=native_enabled(conv_impl)  # the model takes conv_impl
                     and config.model.name in CONV_IMPL_MODELS,
                     precision=config.train.precision,
                     batch_norm_groups=self.parallel.batch_norm_groups(
                         config.parallel.batch_norm),
                     teacher_logits=self.new_run_teacher_logits(self.plan.total_steps))

    def _models(self, config: Any, conv_impl: str) -> tuple[Any, Any]:
        """(the model, its dense twin) on `conv_impl`: with 'sparse' the twin runs the dense
        kernels, for what needs gradients at pruned weights (RigL's growth, SNIP, GraSP). In
        bfloat16, conv_impl='auto' builds XLA's convolutions (training.precision.conv_impl_for)."""
        def build(conv_impl: str) -> Any:
            return get_model(config.model.name, self.data.num_classes, basis=config.model.basis,
                             basis_seed=config.seed, conv_impl=conv_impl,
                             norm_impl=config.model.norm_impl)
        try:  # before the workdir is written: a conv_impl this machine cannot run is bad input
            model = build(precision_lib.conv_impl_for(conv_impl, config.train.precision))
        except NativeKernelError as error:
            raise config_lib.ConfigError(f"invalid config:\n  {error}") from None
        return model, (build(DENSE_TWIN_IMPL) if conv_impl in SPARSE_IMPLS else model)

    def make_trainer(self, data: InputData, conv_impl: Optional[str] = None) -> Trainer:
        """A trainer with this study's model, optimizer, distillation and device layout, over
        `data` (the study's own, or another order or subset of it for the analysis tools), its
        convolutions on `conv_impl` (default: model.conv_impl)."""
        config, kd = self.config, self.config.kd
        model, dense_model = self.model, self.dense_model
        if conv_impl not in (None, config.model.conv_impl):
            model, dense_model = self._models(config, conv_impl)
        return Trainer(model, data, batch_size=config.train.batch_size,
                       momentum=config.train.momentum, weight_decay=config.train.weight_decay,
                       distillation=Distillation(kd.temperature, kd.alpha, kd.reduction),
                       parallel=self.parallel, batch_norm=config.parallel.batch_norm,
                       dense_model=dense_model, precision=config.train.precision)

    def run_conv_impl(self, tag: str) -> str:
        """The conv_impl run `tag` trains on: the one its resume checkpoints were written on (a
        run never switches paths halfway; checkpoints from before this was recorded: the
        previous start's), on the shortcut routing it began with (conv3x3.CONV_ROUTING), else this
        launch's model.conv_impl."""
        starts = read_starts(self.workdir)
        previous = starts[-2].get("conv_impl", "auto") if len(starts) > 1 else "auto"
        return self.conv_impl_at(self.paths.resume(tag), resumed_conv_impl({"conv_impl": previous}))

    def copy_conv_impl(self, store: Path) -> str:
        """The conv_impl an analysis tool's copy (LMC, bootstrap) with resume checkpoints in
        `store` trains on: the recorded one; a copy from before the record ran on the study's
        model.conv_impl at shortcut routing 2, the last without it."""
        before = resumed_conv_impl({"conv_impl": self.config.model.conv_impl, "conv_routing": 2})
        return self.conv_impl_at(store, before)

    def conv_impl_at(self, store: Path, unrecorded: str) -> str:
        """The conv_impl of the newest resume checkpoint in `store` that has a fingerprint
        (resumed_conv_impl of its execution_record; `unrecorded` if it predates that record), or
        model.conv_impl where there is none."""
        fingerprint = latest_fingerprint(store)
        if fingerprint is None:
            return self.config.model.conv_impl
        return resumed_conv_impl(fingerprint) if "conv_impl" in fingerprint else unrecorded

    @classmethod
    def from_workdir(cls, workdir: str | os.PathLike, *,
                     log: Callable[[str], None] = print) -> "Study":
        """The study in `workdir`, rebuilt from its config.json (for analysis tools). Keys added
        since the study began read as their values from before (ADDED_KEYS, as on resume), or
        else as their defaults; the study's plan.json and environment.jsonl are left alone."""
        return cls(identity.load_saved(workdir), workdir, log=log, record=False)

    # ---- snapshots -------------------------------------------------------------------------
    def snapshot_template(self) -> PyTree:
        params, batch_stats = jax.eval_shape(
            lambda key: init_variables(self.model, key, self.data.image_shape),
            jax.random.key(0))
        masks = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, np.bool_), params)
        return {"params": params, "batch_stats": batch_stats, "masks": masks}

    def _snapshot(self, state_params, batch_stats, masks) -> PyTree:
        return {"params": state_params, "batch_stats": batch_stats, "masks": masks}

    def load_snapshot(self, name: str) -> PyTree:
        if name == "init" and self.record and not self.snapshots.exists(name):
            return self.init_snapshot()  # a pure function of the seed: made again if lost
        if name not in self._finals:
            self._finals[name] = self.snapshots.restore(name, self.snapshot_template(),
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
        return self.load_snapshot(name)

    def init_snapshot(self) -> PyTree:
        """The study's initial weights (step 0), created from the seed on first use."""
        if not self.snapshots.exists("init"):
            params, batch_stats = init_variables(self.model, jax.random.key(self.config.seed),
                                                 self.data.image_shape)
            self.snapshots.save("init", self.parallel.replicate(self._snapshot(
                params, batch_stats, masks_lib.create(params, self.scope))))
        return self.load_snapshot("init")

    # ---- training --------------------------------------------------------------------------
    def _train(self, level: int, variant_name: str, start: PyTree, masks: PyTree, *,
               start_step: int, num_steps: int, schedule, distill: bool, on_step=None,
               mask_update: Optional[MaskSchedule] = None) -> dict:
        """Train one run from `start` under `masks`, resuming its checkpoint if there is one;
        then save its snapshot, append its row and delete its resume checkpoints."""
        tag = snapshot_name(level, variant_name)
        main = self.parallel.is_main
        masks = self.parallel.replicate(masks)
        sparsity = masks_lib.sparsity(masks, self.scope)  # at the start (GMP: then it prunes)
        conv_impl, trainer = self._run_trainer(tag, f"[level {level} {variant_name}]")
        state = trainer.init_state(start["params"], start["batch_stats"], masks, start_step)
        teacher_logits = self.run_teacher_logits(tag, num_steps) if distill else None
        kd_record = {"teacher_logits": teacher_logits} if distill else {}
        outputs = RunOutputs.open(
            f"[level {level} {variant_name}]", progress_mode=self.config.log.progress,
            tensorboard=self.paths.tensorboard(tag) if self.config.log.tensorboard else None,
            resume=self.paths.resume(tag), keep=self.config.checkpoint.keep,
            fingerprint={**self.fingerprint, **execution_record(conv_impl), **kd_record},
            log=self.log, main=main)

        cache, cache_counts = None, {}  # the cache's counters at the last epoch end

        def log_scalars(step: int, row: dict) -> None:
            outputs.write_row(step, {"sparsity": sparsity, **row})  # a dynamic run's: its own
            if main and "epoch_seconds" in row:  # the pace analysis.status estimates with
                teacher = ({"teacher": teacher_cache_lib.epoch_source(cache, cache_counts)}
                           if row["distill"] else {})
                results.append_epoch_time(self.workdir, {
                    "level": level, "variant": variant_name, "step": step,
                    "distill": row["distill"], "steps": row["epoch_steps"],
                    "seconds": round(row["epoch_seconds"], 3), **teacher,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})  # -> its start's machine

        try:
            teacher = self.teacher() if distill else None
            cache = self.teacher_cache(teacher) if teacher_logits == "cached" else None
            fit = trainer.fit(state, masks, num_steps=num_steps, schedule=schedule,
                              teacher=teacher, kd_stop_step=self.plan.kd_stop_step,
                              on_step=on_step, callbacks=outputs.callbacks(
                                  checkpoint_every=self.config.checkpoint.every_steps,
                                  stop_requested=self.stop_requested,
                                  mask_update=mask_update, log_scalars=log_scalars),
                              teacher_cache=cache)
            if cache is not None:
                self.log(f"[level {level} {variant_name}] teacher logits: {cache.read} steps "
                         f"read from {cache.directory}, {cache.computed} computed and stored")
        except NonFiniteLossError as error:
            raise TrainingFailed(
                f"level {level}, variant {variant_name}: non-finite loss at global step "
                f"{error.step} ({error}). No result row was written; the last good resume "
                f"checkpoint is kept in {outputs.resume.directory}.") from None
        except TrainingInterrupted as stop:
            raise TrainingInterrupted(stop.step, f"level {level}, variant {variant_name}") \
                from None
        finally:
            outputs.close(resume=False)  # the resume store goes once the row is written
        row = self._record(level, variant_name, fit, start_step=start_step, distill=distill,
                           mask_update=mask_update,
                           execution={"conv_impl": conv_impl, **kd_record})
        if main:
            outputs.resume.delete_all()  # the final snapshot and the row now stand for this run
        else:
            outputs.resume.close()
        return row

    def _run_trainer(self, tag: str, label: str) -> tuple[str, Trainer]:
        """The conv_impl run `tag` trains on (the one it started on) and a trainer for it."""
        conv_impl = self.run_conv_impl(tag)
        if note := path_change_note(latest_fingerprint(self.paths.resume(tag)), conv_impl, label):
            self.log(note)
        if conv_impl == self.config.model.conv_impl:
            return conv_impl, self.trainer
        self.log(f"{label} resumes on model.conv_impl={conv_impl}, the path it started on "
                 f"(model.conv_impl={self.config.model.conv_impl} takes over from the next run)")
        return conv_impl, self.make_trainer(self.data, conv_impl)

    def _record(self, level: int, variant_name: str, fit, *, start_step: int, distill: bool,
                mask_update: Optional[MaskSchedule], execution: dict) -> dict:
        """Save a finished run's snapshot and append its result row (study.run_row: `execution`
        says how it was computed) and the summary; every process waits until the row is
        written."""
        tag = snapshot_name(level, variant_name)
        snapshot = self._snapshot(fit.state.params, fit.state.batch_stats, fit.masks)
        self.snapshots.save(tag, snapshot)
        self._finals[tag] = snapshot
        if self._layer_flops is None:
            self._layer_flops = flops_lib.layer_flops(self.model, self.data.image_shape)
        row = run_row.result_row(level, variant_name, fit, scope=self.scope,
                                 start_step=start_step, distill=distill, execution=execution)
        row.update(run_row.training_flops(
            self._layer_flops, row, mask_update, fit.masks,
            batch_size=self.config.train.batch_size, kd_stop_step=self.plan.kd_stop_step,
            basis=bool(self.config.model.basis)))
        if self.parallel.is_main:
            results.append_row(self.results_path, row)
            results.write_summary(self.workdir, results.read_rows(self.results_path),
                                  f"{self.config.model.name} on {self.config.data.name}",
                                  protocols.describe(self.config))
        self.parallel.barrier(f"row {tag}")
        self.log(f"[level {level} {variant_name}] sparsity {100 * row['sparsity']:.2f}% test "
                 f"{100 * fit.test_accuracy:.2f}% ({fit.seconds:.0f}s)")
        return row

    def teacher(self) -> PyTree:
        """The KD teacher: the trained dense network's parameters and BatchNorm statistics."""
        dense = self.load_snapshot(snapshot_name(0, DENSE))
        return {"params": dense["params"], "batch_stats": dense["batch_stats"]}

    def run_teacher_logits(self, tag: str, num_steps: int) -> str:
        """How KD run `tag` gets its teacher's logits: as its resume checkpoints record (in_step
        if they predate the record), else kd.teacher_logits resolved for this run."""
        mode = resumed_teacher_logits(self.paths.resume(tag))
        return mode if mode is not None else self.new_run_teacher_logits(num_steps)

    def new_run_teacher_logits(self, num_steps: int) -> str:
        """kd.teacher_logits resolved for a KD run of `num_steps` that starts now (recorded in
        environment.jsonl at each start, for `status`'s estimate)."""
        return teacher_cache_lib.resolve_mode(
            self.config.kd.teacher_logits, steps=num_steps,
            batch_size=self.config.train.batch_size, classes=self.data.num_classes,
            processes=self.parallel.process_count)

    def teacher_cache(self, teacher: PyTree) -> teacher_cache_lib.TeacherLogitsCache:
        """The store of `teacher`'s logits on this study's training batches (one per teacher; the
        config digest fixes the data order, batch size and precision; batch size and classes
        give the chunks' shape)."""
        key = {"teacher": teacher_cache_lib.tree_digest(teacher),
               "config_digest": self.fingerprint["config_digest"],
               "batch_size": self.config.train.batch_size, "classes": self.data.num_classes}
        return teacher_cache_lib.TeacherLogitsCache(self.paths.teacher_logits, key,
                                                    log=self.log)

    def _done(self) -> set[tuple[int, str]]:
        return {(r["level"], r["variant"]) for r in results.read_rows(self.results_path)
                if self.snapshots.exists(snapshot_name(r["level"], r["variant"]))}

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
