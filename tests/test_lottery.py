"""The IMP driver end to end on digits: variants start where they should, reruns resume, bad
configs are refused before any training."""

import json
import shutil

import jax
import numpy as np
import pytest

from lottery_kd.study import lottery, results
from lottery_kd.study.checkpoints import SnapshotCache

from lottery_kd.sparsity import masks as masks_lib, pruning
from lottery_kd.config import ConfigError
from lottery_kd.data import DataError
from lottery_kd.data.augment import normalize
from lottery_kd.training.trainer import Trainer
from tests.conftest import make_tiny_config


SEEN_BY_DATA_CRITERION: list[dict] = []  # what the function below was called with


@pruning.register("test_snip_that_records", uses_data=True, distributions=("global",),
                  scopes=("conv",))
def snip_that_records(params, masks, fraction, **context):
    """SNIP, keeping a copy of its inputs: a user's data-using masking function."""
    result = pruning.get("snip")(params, masks, fraction, **context)
    SEEN_BY_DATA_CRITERION.append({"params": jax.device_get(params), "result": result,
                                   "batch": jax.device_get(context["batch"]),
                                   "distribution": context["distribution"]})
    return result


def _leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


class FitSpy:
    """Records what every training run started from, then trains for real."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = Trainer.fit

        def fit(trainer, state, masks, **kwargs):
            self.calls.append({
                "start_step": int(state.step), "num_steps": kwargs["num_steps"],
                "params": jax.device_get(state.params), "masks": jax.device_get(masks),
                "lr_at_start": float(kwargs["schedule"](int(state.step))),
                "lr_at_end": float(kwargs["schedule"](int(state.step) + kwargs["num_steps"] - 1)),
                "teacher": kwargs.get("teacher") is not None,
                "teacher_tree": jax.device_get(kwargs.get("teacher")),
            })
            return original(trainer, state, masks, **kwargs)

        monkeypatch.setattr(Trainer, "fit", fit)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Run the tiny study once (2 levels x all 8 variants) and keep what each run started from."""
    config = make_tiny_config()
    workdir = tmp_path_factory.mktemp("study")
    patcher = pytest.MonkeyPatch()
    spy = FitSpy(patcher)
    run = lottery.LotteryRun(config, workdir, log=lambda *_: None)
    rows = run.run()
    patcher.undo()
    return {"config": config, "workdir": workdir, "rows": rows, "calls": spy.calls, "run": run}


def _snapshot(study, name):
    return study["run"].snapshots.restore(name, study["run"].snapshot_template())


def _call(study, level, variant):
    names = study["config"].lottery.variants.split(",")
    order = [(0, "dense")] + [(level_, v) for level_ in (1, 2) for v in names]
    return study["calls"][order.index((level, variant))]


def test_writes_every_output_with_one_row_per_level_and_variant(study):
    workdir, rows = study["workdir"], study["rows"]
    assert [(r["level"], r["variant"]) for r in rows][:2] == [(0, "dense"), (1, "lt")]
    assert len(rows) == 1 + 2 * 8
    for name in ("config.json", "results.jsonl", "summary.md", "accuracy_vs_sparsity.png"):
        assert (workdir / name).stat().st_size > 0
    assert json.loads((workdir / "config.json").read_text())["train"]["epochs"] == 2
    assert (workdir / "accuracy_vs_sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (workdir / "summary.md").read_text()
    assert "kd_rewind" in summary and "36.00" in summary
    assert results.read_rows(workdir / "results.jsonl") == rows


def test_sparsity_follows_the_iterative_rule(study):
    total = study["rows"][0]["prunable_weights"]
    for row in study["rows"][1:]:
        remaining = total
        for _ in range(row["level"]):
            remaining -= int(np.ceil(0.2 * remaining))
        assert row["remaining_weights"] == remaining


def test_pruned_weights_are_exactly_zero_in_every_final_snapshot(study):
    for row in study["rows"][1:]:
        snapshot = _snapshot(study, lottery.snapshot_name(row["level"], row["variant"]))
        for param, mask in zip(jax.tree.leaves(snapshot["params"]),
                               jax.tree.leaves(snapshot["masks"])):
            assert np.all(np.asarray(param)[~np.asarray(mask)] == 0.0)
        assert masks_lib.sparsity(snapshot["masks"]) == pytest.approx(row["sparsity"])


def test_kd_rows_differ_from_lt_rows(study):
    by_key = {(r["level"], r["variant"]): r for r in study["rows"]}
    for level in (1, 2):
        kd_row, lt_row = by_key[(level, "kd")], by_key[(level, "lt")]
        assert (kd_row["test_accuracy"] != lt_row["test_accuracy"]
                or kd_row["best_val_accuracy"] != lt_row["best_val_accuracy"])
        assert kd_row["distill"] and not lt_row["distill"]
    lt, kd = _snapshot(study, "level_1_lt"), _snapshot(study, "level_1_kd")
    assert not _leaves_equal(lt["params"], kd["params"])


def test_variants_start_from_their_weights_and_schedule_step(study):
    plan = study["run"].plan
    k, total = plan.rewind_step, plan.total_steps
    init, rewind = _snapshot(study, "init"), _snapshot(study, "rewind")
    dense = _snapshot(study, "level_0_dense")
    base_lr = study["config"].train.lr
    for level in (1, 2):
        previous = {v: (dense if level == 1 else _snapshot(study, f"level_1_{v}"))
                    for v in ("lr_rewind", "finetune", "kd_lr_rewind")}
        for variant, source, start, teacher in [
            ("lt", init, 0, False), ("kd", init, 0, True),
            ("weight_rewind", rewind, k, False), ("kd_rewind", rewind, k, True),
            ("lr_rewind", previous["lr_rewind"], 0, False),
            ("kd_lr_rewind", previous["kd_lr_rewind"], 0, True),
            ("finetune", previous["finetune"], 0, False),
        ]:
            call = _call(study, level, variant)
            expected = masks_lib.apply(source["params"], call["masks"])
            assert _leaves_equal(call["params"], expected), (level, variant)
            assert call["start_step"] == start, (level, variant)
            assert call["teacher"] == teacher, (level, variant)
            if teacher:  # always the level-0 dense network, whatever the level
                assert _leaves_equal(call["teacher_tree"]["params"], dense["params"])
                assert _leaves_equal(call["teacher_tree"]["batch_stats"], dense["batch_stats"])
            if variant == "finetune":
                assert call["num_steps"] == total
                final_lr = base_lr * 0.1 ** len(plan.milestone_steps)
                assert call["lr_at_start"] == call["lr_at_end"] == pytest.approx(final_lr)
            else:
                assert call["num_steps"] == total - start
                expected_lr = base_lr if start < plan.milestone_steps[0] else base_lr * 0.1
                assert call["lr_at_start"] == pytest.approx(expected_lr)
        reinit = _call(study, level, "reinit")
        assert not _leaves_equal(reinit["params"], masks_lib.apply(init["params"], reinit["masks"]))


def test_rewind_snapshot_is_the_dense_state_at_step_k(study):
    """Training from init for k steps reproduces the stored rewind weights bitwise."""
    run = study["run"]
    init = _snapshot(study, "init")
    state = run.trainer.init_state(init["params"], init["batch_stats"], init["masks"], 0)
    fit = run.trainer.fit(state, init["masks"], num_steps=run.plan.rewind_step,
                          schedule=run.schedule)
    assert _leaves_equal(fit.state.params, _snapshot(study, "rewind")["params"])


def test_iterative_masks_follow_each_variants_own_chain(study):
    level1 = {v: _snapshot(study, f"level_1_{v}")["masks"] for v in ("lt", "kd")}
    level2 = {v: _snapshot(study, f"level_2_{v}")["masks"] for v in ("lt", "kd")}
    assert _leaves_equal(level1["lt"], level1["kd"])  # level 1: both prune the dense final
    assert not _leaves_equal(level2["lt"], level2["kd"])  # level 2: each its own weights
    for variant in ("lt", "kd"):  # masks only lose weights across levels
        for m1, m2 in zip(jax.tree.leaves(level1[variant]), jax.tree.leaves(level2[variant])):
            assert not np.any(np.asarray(m2) & ~np.asarray(m1))


def test_the_snapshot_cache_holds_a_few_snapshots_not_the_whole_study(study):
    """17 runs wrote 19 snapshots; device memory holds the last 4 used. The variants above still
    started from the right weights, so an evicted snapshot was read back from disk."""
    cache = study["run"]._finals
    assert len(study["run"].snapshots.names()) == 19
    assert 0 < len(cache) <= 4
    assert list(cache)[-1] == "level_2_kd_lr_rewind"  # the last run's final, most recent last


def test_snapshot_cache_drops_the_least_recently_used():
    cache = SnapshotCache(size=2)
    cache["a"], cache["b"] = 1, 2
    assert cache["a"] == 1  # a is now the most recent
    cache["c"] = 3
    assert list(cache) == ["a", "c"]
    cache["d"] = 4
    assert list(cache) == ["c", "d"]


def test_rerun_skips_finished_rows(study, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(Trainer, "fit", no_training)
    rows = lottery.run(study["config"], study["workdir"], log=lambda *_: None)
    assert rows == study["rows"]


def test_resume_after_a_lost_row_trains_only_that_row(study, tmp_path, monkeypatch):
    workdir = tmp_path / "copy"
    shutil.copytree(study["workdir"], workdir)
    lines = (workdir / "results.jsonl").read_text().splitlines()
    # The last row is lost and the one before it torn, as if killed mid-write.
    (workdir / "results.jsonl").write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:17])
    spy = FitSpy(monkeypatch)
    rows = lottery.run(study["config"], workdir, log=lambda *_: None)
    assert len(spy.calls) == 2
    assert [(r["level"], r["variant"]) for r in rows] == \
        [(r["level"], r["variant"]) for r in study["rows"]]
    for new, old in zip(rows, study["rows"]):
        assert new["test_accuracy"] == old["test_accuracy"]  # deterministic retraining


def test_a_changed_config_in_the_same_workdir_is_refused(study):
    config = study["config"].copy_and_resolve_references()
    config.train.lr = 0.2
    config.prune.levels = 3
    with pytest.raises(lottery.WorkdirConfigMismatch) as error:
        lottery.run(config, study["workdir"], log=lambda *_: None)
    assert "train.lr: 0.05 in the workdir, 0.2 now" in str(error.value)
    assert "prune.levels" in str(error.value)


def test_a_workdir_from_before_an_added_setting_resumes_at_the_old_value(tmp_path, monkeypatch):
    """model.norm_impl came after studies had started: their config.json lacks it. They resume
    at its old value ("flax"), snapshots and all, and refuse another value by name."""
    config = make_tiny_config()
    config.prune.levels = 1
    config.lottery.variants = "lt"
    config.model.norm_impl = lottery.ADDED_KEYS["model.norm_impl"]
    rows = lottery.run(config, tmp_path, log=lambda *_: None)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["model"]["norm_impl"]  # as written before the setting existed
    del saved["protocol"]  # and before protocols and their data settings existed
    for key in ("validation_split", "normalization", "crop_scale", "crop_ratio"):
        del saved["data"][key]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    spy = FitSpy(monkeypatch)
    assert lottery.run(config, tmp_path, log=lambda *_: None) == rows
    assert spy.calls == []
    legacy = config.copy_and_resolve_references()  # the digest every snapshot is stamped with
    with legacy.unlocked():
        del legacy.model["norm_impl"]
        del legacy["protocol"]
        for key in ("validation_split", "normalization", "crop_scale", "crop_ratio"):
            del legacy.data[key]
    assert lottery.config_digest(legacy) == lottery.config_digest(config)
    # the analysis tools (lmc, bootstrap) rebuild the study from config.json: keys it lacks
    # read as before, its snapshots restore, and its start records are left alone
    del saved["prune"]["first_level"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    records = {name: (tmp_path / name).read_text() for name in ("plan.json", "environment.jsonl")}
    study = lottery.LotteryRun.from_workdir(tmp_path, log=lambda *_: None)
    assert (study.config.model.norm_impl, study.config.prune.first_level) == ("flax", 1)
    assert (study.config.protocol, study.config.data.validation_split,
            study.config.data.normalization) == ("", "random", "train_statistics")
    assert study.fingerprint["config_digest"] == lottery.config_digest(config)
    assert study.load_snapshot(lottery.snapshot_name(1, "lt"))["masks"] is not None
    assert {name: (tmp_path / name).read_text() for name in records} == records
    config.model.norm_impl = "fused"
    assert lottery.config_digest(config) != lottery.config_digest(legacy)
    with pytest.raises(lottery.WorkdirConfigMismatch) as error:
        lottery.run(config, tmp_path, log=lambda *_: None)
    assert "model.norm_impl: 'flax' in the workdir, 'fused' now" in str(error.value)


def test_per_device_batch_norm_refuses_another_device_count_than_the_study_had(tmp_path):
    """Per-device BatchNorm statistics depend on the device count: a study started on 4
    devices does not resume (or get analysed) on 1. Global BatchNorm does not care."""
    def starts_with_devices(workdir, count, with_groups):
        lines = []
        for start in results.read_json_lines(workdir / "environment.jsonl"):
            start["device_count"] = count
            if with_groups:
                start["batch_norm_groups"] = count
            else:
                start.pop("batch_norm_groups", None)  # a start from before the groups were kept
            lines.append(json.dumps(start))
        (workdir / "environment.jsonl").write_text("\n".join(lines) + "\n")

    config = make_tiny_config()
    config.parallel.batch_norm = "per_device"
    lottery.LotteryRun(config, tmp_path / "per_device", log=lambda *_: None)
    started = results.read_json_lines(tmp_path / "per_device" / "environment.jsonl")
    assert [s["batch_norm_groups"] for s in started] == [1]
    lottery.LotteryRun(config, tmp_path / "per_device", log=lambda *_: None)  # same count: fine
    for with_groups in (True, False):
        starts_with_devices(tmp_path / "per_device", 4, with_groups)
        with pytest.raises(ConfigError, match=r"parallel.batch_norm='per_device': .* over 4 "
                                              r"devices .* this process has 1.*"
                                              r"num_cpu_devices=4"):
            lottery.LotteryRun(config, tmp_path / "per_device", log=lambda *_: None)
        with pytest.raises(ConfigError, match="over 4 devices"):
            lottery.LotteryRun.from_workdir(tmp_path / "per_device", log=lambda *_: None)
    config.parallel.batch_norm = "global"
    lottery.LotteryRun(config, tmp_path / "global", log=lambda *_: None)
    starts_with_devices(tmp_path / "global", 4, True)
    lottery.LotteryRun(config, tmp_path / "global", log=lambda *_: None)


def test_pruning_at_init_with_a_registered_data_criterion_scores_init_on_batch_0(tmp_path):
    """prune.source=init with a user function registered with uses_data=True: the driver
    scores the init snapshot (not the trained weights) on the normalised batch of step 0, and
    the ticket trains the mask the function returned."""
    config = make_tiny_config()
    config.prune.method = "test_snip_that_records"
    config.prune.source = "init"
    config.prune.schedule = "oneshot"
    config.prune.fraction = 0.5
    config.prune.levels = 1
    config.lottery.variants = "lt"
    SEEN_BY_DATA_CRITERION.clear()
    run = lottery.LotteryRun(config, tmp_path, log=lambda *_: None)
    run.run()
    [call] = SEEN_BY_DATA_CRITERION
    init = run.load_snapshot("init")
    assert _leaves_equal(call["params"], init["params"])
    assert not _leaves_equal(call["params"], run.load_snapshot("level_0_dense")["params"])
    images, labels = run.trainer.device_batch(0)
    expected_images = normalize(images, run.data.mean, run.data.std)
    np.testing.assert_array_equal(call["batch"][0], np.asarray(expected_images))
    np.testing.assert_array_equal(call["batch"][1], np.asarray(labels))
    assert _leaves_equal(run.load_snapshot("level_1_lt")["masks"], call["result"])
    assert masks_lib.sparsity(call["result"], "conv") == pytest.approx(0.5, abs=0.01)
    # what the function declared it is for is enforced by config validation, by name
    for key, value in (("prune.distribution", "erk"), ("prune.scope", "conv_fc")):
        bad = config.copy_and_resolve_references()
        section, name = key.split(".")
        bad[section][name] = value
        with pytest.raises(ConfigError, match=rf"{key}.*test_snip_that_records"):
            lottery.LotteryRun(bad, tmp_path / "refused", log=lambda *_: None)
        assert not (tmp_path / "refused").exists()


def test_a_lost_rewind_snapshot_is_an_error_not_the_final_dense_weights(tmp_path):
    """The rewind snapshot is written before step k; if it is gone when the dense run resumes
    past k, it cannot be recreated there, and weight_rewind must not silently start from the
    final dense weights."""
    from lottery_kd.study.checkpoints import CheckpointError
    from lottery_kd.training.errors import TrainingInterrupted
    config = make_tiny_config()
    config.prune.levels = 1
    config.lottery.variants = "weight_rewind"
    rewind = tmp_path / "checkpoints" / "snapshots" / "rewind"
    with pytest.raises(TrainingInterrupted):  # stopped (and checkpointed) just after step k
        lottery.run(config, tmp_path, log=lambda *_: None, stop_requested=rewind.exists)
    shutil.rmtree(rewind)
    with pytest.raises(CheckpointError, match="snapshot 'rewind' .* step 19\\) is missing"):
        lottery.run(config, tmp_path, log=lambda *_: None)
    assert not (tmp_path / "results.jsonl").exists() or \
        "weight_rewind" not in (tmp_path / "results.jsonl").read_text()


@pytest.mark.parametrize("key, value, expected", [
    ("model.name", "resnet21", "model.name='resnet21' is invalid: allowed: "),
    ("lottery.variants", "lt,kd_ticket", "unknown kd_ticket; allowed: lt, reinit"),
    ("prune.method", "magnitude", "prune.method='magnitude' is invalid: allowed: magnitude_global"),
    ("prune.scope", "all",
     "prune.scope='all' is invalid: allowed: conv, conv_no_shortcut, conv_fc"),
    ("prune.fraction", 1.0, "prune.fraction=1.0 is invalid: a number in the open interval (0, 1)"),
    ("prune.fraction", 0.0, "prune.fraction=0.0 is invalid"),
    ("lottery.rewind", "20ep", "lottery.rewind='20ep' is step 380, not before the end of training"),
])
def test_bad_input_is_refused_before_any_training(tiny_config, tmp_path, monkeypatch, key,
                                                  value, expected):
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("trained despite bad input"))
    section, name = key.split(".")
    setattr(getattr(tiny_config, section), name, value)
    with pytest.raises(ConfigError) as error:
        lottery.run(tiny_config, tmp_path, log=lambda *_: None)
    assert expected in str(error.value)
    assert not (tmp_path / "results.jsonl").exists()


def test_a_bad_cifar_directory_is_refused_before_any_training(tmp_path, monkeypatch):
    from experiments import cifar10_resnet20
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("trained despite bad data"))
    data_dir = tmp_path / "cifar"
    data_dir.mkdir()
    for name in ("data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
                 "test_batch.bin"):
        with open(data_dir / name, "wb") as handle:
            handle.truncate(30_730_000)
    (data_dir / "data_batch_4.bin").write_bytes(b"\0" * 100)
    config = cifar10_resnet20.get_config()
    config.data.dir = str(data_dir)
    with pytest.raises(DataError) as error:
        lottery.run(config, tmp_path / "run", log=lambda *_: None)
    message = str(error.value)
    assert "data_batch_5.bin" in message and "data_batch_4.bin" in message
    assert "100" in message and "30730000" in message.replace(",", "")
    assert "data.dir" in message


def test_a_row_whose_snapshot_was_lost_is_redone_not_duplicated(study, tmp_path):
    import shutil
    workdir = tmp_path / "copy"
    shutil.copytree(study["workdir"], workdir)
    shutil.rmtree(workdir / "checkpoints" / "snapshots" / "level_2_kd_rewind")
    rows = lottery.run(study["config"], workdir, log=lambda *_: None)
    keys = [(r["level"], r["variant"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(study["rows"])
    before = {(r["level"], r["variant"]): r for r in study["rows"]}
    assert rows[-1]["variant"] == "kd_rewind"  # redone, so appended last
    assert rows[-1]["test_accuracy"] == before[(2, "kd_rewind")]["test_accuracy"]


def test_the_refusal_of_another_config_gives_the_flags_that_resume_the_saved_one(tmp_path):
    """A study from before protocols (its config.json lacks their keys) met by today's
    experiment defaults: the message lists every differing key and a set of --config flags
    that, applied to today's config, make it the saved one again."""
    from experiments import cifar10_resnet20
    old = cifar10_resnet20.get_config("kd_ticket")
    old.update_from_flattened_dict({"train.epochs": 15, "train.milestones": "",
                                    "lottery.rewind": "955it"})
    saved = lottery.config_to_dict(old)
    del saved["protocol"], saved["data"]["validation_split"], saved["data"]["normalization"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    today = cifar10_resnet20.get_config()
    with pytest.raises(lottery.WorkdirConfigMismatch) as error:
        lottery.prepare_workdir(tmp_path, today)
    message = str(error.value)
    assert "data.validation_size: 5000 in the workdir, 0 now" in message
    flags = message.rsplit("to resume: ", 1)[1].split()
    assert "--config.data.validation_split=random" in flags  # only matters once size is 5000
    assert "--config.train.milestones=" in flags
    for flag in flags:
        key, value = flag[len("--config."):].split("=", 1)
        current = today
        for part in key.split(".")[:-1]:
            current = current[part]
        leaf = key.split(".")[-1]
        current[leaf] = type(current[leaf])(value) if current[leaf] is not None else value
    lottery.prepare_workdir(tmp_path, today)  # no mismatch left


def test_oneshot_only_levels_runs_the_listed_levels_in_order_and_adds_more_later(
        tmp_path, monkeypatch):
    """prune.only_levels picks the one-shot levels to run (e.g. Renda's densities 0.107 and
    0.168 without the levels between); it changes no result, so the same workdir takes more."""
    config = make_tiny_config()
    config.prune.schedule, config.prune.levels, config.lottery.variants = "oneshot", 3, "lt"
    config.prune.only_levels = "3"
    rows = lottery.run(config, tmp_path, log=lambda *_: None)
    assert [(r["level"], r["variant"]) for r in rows] == [(0, "dense"), (3, "lt")]
    config.prune.only_levels = "3,1"
    spy = FitSpy(monkeypatch)
    rows = lottery.run(config, tmp_path, log=lambda *_: None)
    assert [(r["level"], r["variant"]) for r in rows] == [(0, "dense"), (3, "lt"), (1, "lt")]
    assert len(spy.calls) == 1  # only level 1 trained
    assert rows[2]["sparsity"] == pytest.approx(0.2, abs=0.01)
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [(r["level"], r["variant"]) for r in plan["runs"]] == [(0, "dense"), (3, "lt"),
                                                                   (1, "lt")]


def test_a_user_weight_source_reading_the_rewind_point_past_the_end_is_refused(tmp_path):
    """With lottery.rewind at the end of training, 'rewind' holds the final dense weights; a
    user's weight source that reads it under schedule 'zero' (which plan_steps does not check)
    is refused by name rather than trained from the wrong weights."""
    from lottery_kd.study import variants
    if "rewound_full_schedule" not in variants.names():
        variants.register_weight_source("from_rewind_snapshot",
                                        lambda context: context.load("rewind"))
        variants.register(variants.RetrainVariant("rewound_full_schedule",
                                                  weights="from_rewind_snapshot",
                                                  schedule="zero"))
    config = make_tiny_config()
    config.prune.levels = 1
    config.lottery.variants = "lt,rewound_full_schedule"
    config.lottery.rewind = "2ep"  # = train.epochs: the end
    with pytest.raises(ConfigError) as info:
        lottery.run(config, tmp_path, log=lambda *_: None)
    assert "lottery.rewind='2ep'" in str(info.value)
    assert "'rewound_full_schedule'" in str(info.value)
    assert "'from_rewind_snapshot'" in str(info.value)
    assert [r["variant"] for r in results.read_rows(tmp_path / "results.jsonl")] == ["dense", "lt"]
