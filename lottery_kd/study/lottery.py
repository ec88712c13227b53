"""The IMP driver: levels x retrain variants -> results.jsonl, summary.md, plot, snapshots.

    init -> dense training (snapshot "rewind" at step k) -> level 0 final = the teacher
    for level L = 1..N, for each variant V:
        masks_L = prune(V's level L-1 final, V's level L-1 masks, fraction)      [iterative]
               or prune(dense final, all-true, 1 - (1 - fraction)^L)              [one-shot]
        weights <- V's start (its registered weight source: init | rewind | previous | ...)
        train with V's schedule and loss -> snapshot "level_L_V" -> one results row

Re-running the same command skips every (level, variant) whose row and snapshot exist; a different
config in the same workdir is refused, naming the keys that differ.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp

from lottery_kd import config as config_lib
from lottery_kd.config import protocols
from lottery_kd.config.identity import (ADDED_KEYS, COSMETIC_KEYS,  # noqa: F401  (re-exported)
                                        config_digest, config_to_dict)
from lottery_kd.data.augment import normalize
from lottery_kd.sparsity import distributions, gradual, masks as masks_lib, pruning
from lottery_kd.sparsity import structure as structure_lib
from lottery_kd.sparsity.dynamic import MaskSchedule, MaskUpdate
from lottery_kd.sparsity.gradual import GradualPruning
from lottery_kd.sparsity.sparse_init import sparse_aware_init
from lottery_kd.study import results, variants as variants_lib
from lottery_kd.study.checkpoints import CheckpointError
from lottery_kd.study.study import Study, TrainingFailed  # noqa: F401  (re-exported)
from lottery_kd.study.variants import DENSE, derived_key, snapshot_name  # noqa: F401
from lottery_kd.study.workdir_checks import (WorkdirConfigMismatch, WorkdirError,  # noqa: F401
                                             check_workdir_path, prepare_workdir, study_lock)
from lottery_kd.training import optim, teacher_cache as teacher_cache_lib
from lottery_kd.training.errors import TrainingInterrupted
from lottery_kd.training.steps import init_variables

PyTree = Any


class LotteryRun(Study):
    """A lottery-ticket study: the dense run, then every level's masks and retrain variants
    (or one dynamic sparse run), each resumed or skipped as the workdir says."""

    def run_dense(self) -> None:
        """Train (or resume) the dense network, snapshotting its weights at the rewind step."""
        rewind_step = self.plan.rewind_step
        lost_rewind = f"snapshot 'rewind' (the dense weights at step {rewind_step})"
        if (0, DENSE) in self._done():
            if self.snapshots.exists("rewind"):
                return
            if rewind_step < self.plan.total_steps:  # finished, and its step-k weights lost
                raise CheckpointError(self._lost_dense_message(lost_rewind))
        elif self._later_rows() and self._dense_path_changed():
            raise CheckpointError(self._lost_dense_message(
                f"the dense network's snapshot {snapshot_name(0, DENSE)!r} (its row says it "
                "trained on another conv_impl than a retrain would)"))
        init = self.init_snapshot()

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
            raise CheckpointError(self._lost_dense_message(lost_rewind))
        # k at or past the end: no variant rewinds, but every study has the snapshot
        self.snapshots.save("rewind", self.load_snapshot(snapshot_name(0, DENSE)))

    def _dense_path_changed(self) -> bool:
        """Whether the dense run's row records another conv_impl than a retrain would take: on
        one path a retrain is bit for bit the lost run (so a lost snapshot is trained again, as
        any lost run is), on another it is a different network under the finished tickets."""
        row = next((r for r in results.read_rows(self.results_path)
                    if (r["level"], r["variant"]) == (0, DENSE)), None)
        recorded = (row or {}).get("conv_impl")
        return recorded is not None and recorded != self.run_conv_impl(snapshot_name(0, DENSE))

    def _later_rows(self) -> list[str]:
        """The finished runs past level 0 (their masks and teacher are the dense network's)."""
        return [snapshot_name(r["level"], r["variant"])
                for r in results.read_rows(self.results_path) if r["level"] > 0]

    def _lost_dense_message(self, what: str) -> str:
        """Why a finished dense run is not trained again: the tickets already finished were
        pruned from it and distilled from it, and a retrained one would differ under them."""
        later = self._later_rows()
        if not later:
            return (f"{what} is missing from {self.paths.root}, but the dense run has passed "
                    "that step; restore it, or move checkpoints/snapshots/level_0_dense and "
                    "checkpoints/resume/level_0_dense away to retrain the dense network")
        return (f"{what} is missing from {self.paths.root}, and {len(later)} finished run(s) "
                f"were pruned from or distilled from that network ({', '.join(later[:3])}"
                f"{', ...' if len(later) > 3 else ''}); training it again would give them "
                "another teacher and masks under the same rows. Restore it (from a copy: "
                "python -m lottery_kd.study.carry restore), or start a new --workdir")

    def masks_for(self, level: int, variant: str) -> PyTree:
        """The level's mask for `variant` (pure in the snapshots it reads, so safe to recompute).

        The chain's masks come from the previous level (iterative) or the dense network
        (one-shot); the weights scored are that run's final weights, or the init snapshot with
        prune.source='init' (pruning at initialisation: SNIP, GraSP, SynFlow, ...).
        """
        prune = self.config.prune
        method = pruning.get(prune.method)
        if prune.schedule == "oneshot":
            chain = self.load_snapshot(snapshot_name(0, DENSE))
            fraction = distributions.oneshot_fraction(prune.fraction, level)
            rng = derived_key(self.config.seed, "prune", level)
        else:
            chain = self.load_snapshot(snapshot_name(level - 1, DENSE if level == 1 else variant))
            fraction = prune.fraction
            rng = derived_key(self.config.seed, "prune", level, variant)
        scored = self.load_snapshot("init") if prune.source == "init" else chain
        masks = method(scored["params"], chain["masks"], fraction, rng=rng, scope=self.scope,
                       **self.prune_context(scored, with_batch=pruning.uses_data(prune.method)))
        try:
            pruning.check_result(prune.method, masks, chain["masks"], scored["params"],
                                 self.scope, prune.structure)
        except ValueError as error:  # a user's function breaking the contract: say so, cleanly
            raise config_lib.ConfigError(f"invalid config:\n  prune.method={prune.method!r}: "
                                         f"{error}") from None
        return masks

    def prune_context(self, scored: PyTree, *, with_batch: bool) -> dict:
        """What criteria may need: the model, BatchNorm statistics, the input shape, the pruning
        settings, and (`with_batch`) the normalised training batch of step 0."""
        prune = self.config.prune
        context = {"model": self.dense_model, "batch_stats": scored["batch_stats"],
                   "input_shape": tuple(self.data.image_shape),
                   "distribution": prune.distribution, "structure": prune.structure,
                   "synflow_rounds": prune.synflow_rounds,
                   "grasp_temperature": prune.grasp_temperature}
        if with_batch:
            images, labels = self.trainer.device_batch(0)
            context["batch"] = (normalize(images, self.data.mean, self.data.std), labels)
        return context

    def run_variant(self, level: int, variant: variants_lib.RetrainVariant) -> None:
        """Train (or resume) one retrain variant at one level: its mask, its start (from its
        registered weight source), its schedule and its loss."""
        masks = self.masks_for(level, variant.name)
        context = variants_lib.StartContext(
            level=level, variant=variant.name, masks=masks, seed=self.config.seed,
            scope=self.scope, oneshot=self.config.prune.schedule == "oneshot",
            load=lambda name: self._load_for(variant, name),
            fresh=lambda key: init_variables(self.model, key, self.data.image_shape))
        start = variants_lib.weight_source(variant.weights)(context)
        start_step, num_steps = self.steps_of(variant)
        schedule = self.schedule
        if variant.schedule == "final":  # the whole budget at the final learning rate
            schedule = optim.constant_schedule(float(self.schedule(self.plan.total_steps - 1)))
        self._train(level, variant.name, start, masks, start_step=start_step,
                    num_steps=num_steps, schedule=schedule, distill=variant.distill)

    def _load_for(self, variant: variants_lib.RetrainVariant, name: str) -> PyTree:
        """Snapshot `name` for `variant`'s weight source. With the rewind point at or past the
        end, 'rewind' holds the final dense weights (run_dense): a user's source that reads it
        under a variant plan_steps did not check (schedule 'zero') is refused, not misled."""
        if name == "rewind" and self.plan.rewind_step >= self.plan.total_steps:
            raise config_lib.ConfigError(
                f"invalid config:\n  lottery.rewind={self.config.lottery.rewind!r} is step "
                f"{self.plan.rewind_step}, not before the end of training (step "
                f"{self.plan.total_steps}), but variant {variant.name!r}'s weight source "
                f"{variant.weights!r} reads the rewind snapshot; choose an earlier rewind point")
        return self.load_snapshot(name)

    def run_dynamic(self) -> None:
        """Dynamic sparse training (RigL, SET, ...) from init at dynamic.sparsity, its masks
        updated during training at a constant count, or gradual magnitude pruning (gmp) from
        the dense init to dynamic.sparsity; with dynamic.distill, KD from the dense network.
        One row: level 1, variant e.g. 'rigl_kd' or 'gmp'."""
        dyn, name = self.config.dynamic, self.dynamic_name()
        if (1, name) in self._done():
            return
        init = self.load_snapshot("init")
        total = self.plan.total_steps
        if dyn.method == gradual.NAME:  # dense at first (init's all-true masks)
            start, masks = init, init["masks"]
            update: MaskSchedule = GradualPruning(
                dyn.sparsity, dyn.delta_t, *gradual.pruning_steps(dyn.start_fraction,
                                                                  dyn.end_fraction, total),
                distribution=dyn.distribution, scope=self.scope,
                structure=self.config.prune.structure)
        else:
            start, masks = self._sparse_start(init)
            update = MaskUpdate(dyn.method, dyn.delta_t, dyn.alpha,
                                end_step=int(dyn.end_fraction * total), seed=self.config.seed,
                                scope=self.scope, structure=self.config.prune.structure)
        self._train(1, name, start, masks, start_step=0, num_steps=total,
                    schedule=self.schedule, distill=dyn.distill, mask_update=update)

    def _sparse_start(self, init: PyTree) -> tuple[PyTree, PyTree]:
        """(weights, masks) a drop-and-grow run starts from: random masks at dynamic.sparsity
        (dynamic.distribution's layer densities) over the init weights, or over their
        sparse-aware redraw (dynamic.init='sparse')."""
        dyn = self.config.dynamic
        masks = pruning.get("random")(init["params"], init["masks"], dyn.sparsity,
                                      rng=derived_key(self.config.seed, "dynamic", "masks"),
                                      scope=self.scope, distribution=dyn.distribution,
                                      structure=self.config.prune.structure)
        if dyn.init != "sparse":
            return init, masks
        return {"params": sparse_aware_init(init["params"], masks, derived_key(
            self.config.seed, "dynamic", "sparse_init"), scope=self.scope),
            "batch_stats": init["batch_stats"]}, masks

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

    def preflight(self) -> None:
        """ConfigError, before any training, for a model and data set or structure that would
        train something other than asked, from the model's shapes alone (jax.eval_shape, no
        compute): a layer whose output is empty on these images (a deep VGG on 8x8 digits: NaN
        logits), or a prune.structure that fits no in-scope layer (dense tickets)."""
        images = jnp.zeros((1, *self.data.image_shape))
        _, variables = jax.eval_shape(lambda: self.model.init_with_output(
            jax.random.key(0), images, train=False, capture_intermediates=True))
        empty = [masks_lib.path_name(path).split("/__call__")[0] for path, leaf in
                 jax.tree_util.tree_flatten_with_path(variables["intermediates"])[0]
                 if 0 in leaf.shape]
        if empty:
            raise config_lib.ConfigError(
                f"invalid config:\n  model.name={self.config.model.name!r} is invalid for "
                f"data.name={self.config.data.name!r}: on its {self.data.image_shape} images "
                f"{len(empty)} layer output(s) are empty ({', '.join(empty[:3])}, ...), which "
                "would train on NaN; use a model made for images this small, or larger images")
        self.check_structure_fits(variables["params"])
        self.check_teacher_cache_room()

    def check_teacher_cache_room(self) -> None:
        """ConfigError where KD runs still to come would cache the teacher's logits (kd.
        teacher_logits cached, or auto resolved to it) on a file system without the room:
        they would fail hours in, after the dense run."""
        done = self._done()
        if not any(run["distill"] and (run["level"], run["variant"]) not in done
                   for run in self.planned_runs()):
            return
        total = self.plan.total_steps
        if self.new_run_teacher_logits(total) != "cached":
            return
        need = teacher_cache_lib.cache_bytes(total, self.config.train.batch_size,
                                             self.data.num_classes)
        short = teacher_cache_lib.missing_room(self.paths.teacher_logits, need)
        if short:
            raise config_lib.ConfigError(
                f"invalid config:\n  kd.teacher_logits={self.config.kd.teacher_logits!r} is "
                f"invalid here: the teacher's logits need {need / 2**30:.2f} GiB in "
                f"{self.paths.teacher_logits}, {short / 2**30:.2f} GiB more than its file "
                "system has free; free the space or set kd.teacher_logits=in_step")

    def check_structure_fits(self, params: PyTree) -> None:
        """ConfigError where prune.structure fits no in-scope kernel of `params` (shapes will
        do): its tickets would be dense networks; otherwise names the layers it leaves as
        they are."""
        shape = structure_lib.parse(self.config.prune.structure)
        if shape.kind == "unstructured":
            return
        kernels = [(name, leaf.shape) for name, leaf in masks_lib.named_leaves(params)
                   if masks_lib.is_prunable(name, leaf.shape, self.scope)]
        try:
            outside = structure_lib.out_of_structure(shape, kernels)
        except ValueError as error:
            raise config_lib.ConfigError(
                f"invalid config:\n  prune.structure={shape.text!r} is invalid for "
                f"{self.config.model.name} with prune.scope={self.scope!r}: {error}") from None
        if outside:
            self.log(f"prune.structure={shape.text}: {len(outside)} of {len(kernels)} layers in "
                     f"scope do not fit it and stay as they are: {', '.join(outside)}")

    def run(self) -> list[dict]:
        """Run (or resume) the whole study; returns all result rows."""
        self.preflight()
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


def run(config: Any, workdir: str | os.PathLike, *, log: Callable[[str], None] = print,
        stop_requested: Callable[[], bool] = lambda: False) -> list[dict]:
    """Validate `config`, then run or resume the study in `workdir`, holding its lock: a second
    run of the same workdir raises WorkdirBusy before anything is computed."""
    config_lib.validate(config)
    check_workdir_path(workdir)
    with study_lock(workdir):
        return LotteryRun(config, workdir, log=log, stop_requested=stop_requested).run()
