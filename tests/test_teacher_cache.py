"""Cached teacher logits (training.teacher_cache): a KD step fed stored logits trains as the
one that runs the teacher itself; the study's KD runs share one forward pass per step; a damaged
chunk is computed again; each run records its mode and resumes on it."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_kd.config import ConfigError
from lottery_kd.models import build_cifar_resnet
from lottery_kd.study import carry, lottery, results
from lottery_kd.study.study import Study
from lottery_kd.study.workdir import Workdir
from lottery_kd.training import optim, teacher_cache
from lottery_kd.training.errors import TrainingInterrupted
from lottery_kd.training.steps import (Distillation, TrainState, init_variables,
                                       make_teacher_forward, make_train_step)
from tests.conftest import make_tiny_config
from tests.routing_helpers import routing_study, write_fingerprint

KD = Distillation(temperature=4.0, alpha=0.9, reduction="mean")


def _kd_config():
    config = make_tiny_config()
    config.prune.levels, config.prune.first_level = 1, 1
    config.lottery.variants = "kd,kd_rewind"
    return config


def _run(config, workdir, **kwargs):
    lines = []
    rows = lottery.run(config, workdir, log=lines.append, **kwargs)
    return rows, lines


def _final_params(workdir, tag):
    return jax.device_get(Study.from_workdir(workdir, log=lambda *_: None)
                          .load_snapshot(tag)["params"])


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_a_kd_step_fed_the_teachers_logits_matches_the_step_that_runs_the_teacher():
    model = build_cifar_resnet(8, 10)
    params, stats = init_variables(model, jax.random.key(0), (32, 32, 3))
    teacher = dict(zip(("params", "batch_stats"),
                       init_variables(model, jax.random.key(1), (32, 32, 3))))
    masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
    images = jax.random.randint(jax.random.key(2), (16, 32, 32, 3), 0, 256).astype(jnp.uint8)
    labels = jnp.arange(16) % 10
    normalization = ((125.0, 123.0, 114.0), (63.0, 62.0, 66.0))
    optimizer = optim.sgd_direction(0.9, 1e-4)
    outcomes = []
    for teacher_input in ("params", "logits"):
        step = make_train_step(model, optimizer, KD, normalization=normalization,
                               teacher_input=teacher_input)
        given = teacher if teacher_input == "params" else make_teacher_forward(
            model, normalization=normalization)(teacher, images)
        state = TrainState(jnp.zeros((), jnp.int32), params, stats, optimizer.init(params))
        state = jax.tree.map(jnp.array, state)  # the step donates its input
        outcomes.append(step(state, masks, images, labels, jnp.float32(0.1), given))
    (first, first_metrics), (second, second_metrics) = outcomes
    np.testing.assert_allclose(first_metrics["loss"], second_metrics["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def cached_study(tmp_path_factory):
    """The tiny study's two KD runs on one level, with the default kd.teacher_logits (auto)."""
    workdir = tmp_path_factory.mktemp("cached")
    rows, lines = _run(_kd_config(), workdir)
    return workdir, rows, lines


def test_the_second_kd_run_reads_every_step_the_first_computed(cached_study):
    workdir, rows, lines = cached_study
    assert {row["variant"]: row["teacher_logits"] for row in rows if row["distill"]} == \
        {"kd": "cached", "kd_rewind": "cached"}
    by_variant = {row["variant"]: row for row in rows}
    kd_line = next(line for line in lines if line.startswith("[level 1 kd]") and "teacher" in line)
    rewind_line = next(line for line in lines
                       if line.startswith("[level 1 kd_rewind]") and "teacher" in line)
    assert "0 steps read from" in kd_line
    assert f"{by_variant['kd']['steps']} computed" in kd_line
    assert f"{by_variant['kd_rewind']['steps']} steps read" in rewind_line
    assert rewind_line.endswith(", 0 computed and stored")
    # each epoch records where its teacher logits came from (status and the results page read it)
    epochs = results.read_epoch_times(workdir)
    assert {e["variant"]: e.get("teacher") for e in epochs} == \
        {"dense": None, "kd": "computed", "kd_rewind": "read"}
    assert len({e.get("teacher") for e in epochs if e["variant"] == "kd_rewind"}) == 1
    chunks = sorted((Workdir(workdir).teacher_logits).glob("*/chunk_*.npy"))
    assert chunks and all(path.with_suffix(".json").is_file() for path in chunks)
    stored = np.concatenate([np.load(path) for path in chunks])
    total = by_variant["kd"]["steps"]
    assert np.isfinite(stored[:total]).all() and np.isnan(stored[total:]).all()


def test_reading_the_cache_trains_exactly_as_computing_it(cached_study, tmp_path):
    """kd_rewind of a study whose cache is deleted before it (so it computes every step itself)
    ends bit for bit where the one that read the cache ended."""
    workdir, rows, _ = cached_study
    config = _kd_config()
    kd_done = Workdir(tmp_path).snapshot("level_1_kd")
    with pytest.raises(TrainingInterrupted):  # the same study's dense and kd runs, then a stop
        _run(config, tmp_path, stop_requested=kd_done.exists)
    for folder in Workdir(tmp_path).teacher_logits.iterdir():
        for path in folder.iterdir():
            path.unlink()
    again, lines = _run(config, tmp_path)
    assert any(line.startswith("[level 1 kd_rewind] teacher logits: 0 steps read")
               for line in lines)
    assert _same(_final_params(tmp_path, "level_1_kd_rewind"),
                 _final_params(workdir, "level_1_kd_rewind"))


def test_a_damaged_chunk_is_set_aside_and_computed_again(cached_study, tmp_path):
    import shutil
    workdir, _, _ = cached_study
    shutil.copytree(workdir, tmp_path / "copy")
    copy = tmp_path / "copy"
    chunk = next(Workdir(copy).teacher_logits.glob("*/chunk_00000.npy"))
    payload = bytearray(chunk.read_bytes())
    payload[-5] ^= 0xFF
    chunk.write_bytes(bytes(payload))
    results_path = Workdir(copy).results
    kept = [row for row in results.read_rows(results_path) if row["variant"] != "kd_rewind"]
    results_path.write_text("".join(json.dumps(row) + "\n" for row in kept))
    _, lines = _run(_kd_config(), copy)
    assert any("does not match its checksum: set aside as .damaged" in line for line in lines)
    assert chunk.with_name(chunk.name + ".damaged").is_file()
    assert _same(_final_params(copy, "level_1_kd_rewind"),
                 _final_params(workdir, "level_1_kd_rewind"))


def test_a_stopped_kd_run_keeps_the_logits_it_computed(tmp_path):
    config = _kd_config()
    config.lottery.variants = "kd"
    polls = {"kd": 0}

    def stop_in_the_kd_run():  # polled before the run, then after each of its steps
        polls["kd"] += Workdir(tmp_path).snapshot("level_0_dense").exists()
        return polls["kd"] > 10

    with pytest.raises(TrainingInterrupted):
        _run(config, tmp_path, stop_requested=stop_in_the_kd_run)
    chunk = next(Workdir(tmp_path).teacher_logits.glob("*/chunk_00000.npy"))
    stored = np.isfinite(np.load(chunk)).all(axis=(1, 2))
    assert stored[:10].all() and not stored[10:].any()  # the ten steps before the stop
    rows, lines = _run(config, tmp_path)
    line = next(line for line in lines if "[level 1 kd] teacher logits" in line)
    steps = next(row["steps"] for row in rows if row["variant"] == "kd")
    assert line.endswith(f"0 steps read from {chunk.parent}, {steps - 10} computed and stored")


def test_runs_resume_on_the_mode_their_checkpoints_record(tmp_path):
    study = routing_study(tmp_path, "auto")
    assert study.run_teacher_logits("level_1_kd", 1000) == "cached"
    write_fingerprint(study.paths.resume("level_1_kd"), {"conv_impl": "native"})
    assert study.run_teacher_logits("level_1_kd", 1000) == "in_step"  # from before the record
    write_fingerprint(study.paths.resume("level_1_kd_rewind"),
                      {"conv_impl": "native", "teacher_logits": "cached"})
    study.config.kd.teacher_logits = "in_step"
    assert study.run_teacher_logits("level_1_kd_rewind", 1000) == "cached"
    assert study.run_teacher_logits("level_2_kd", 1000) == "in_step"  # a new run: the config


def test_auto_caches_only_what_fits_on_one_process():
    small = dict(steps=70980, batch_size=128, classes=10)
    assert teacher_cache.resolve_mode("auto", processes=1, **small) == "cached"
    assert teacher_cache.resolve_mode("auto", processes=2, **small) == "in_step"
    imagenet = dict(steps=450_000, batch_size=256, classes=1000)
    assert teacher_cache.resolve_mode("auto", processes=1, **imagenet) == "in_step"
    with pytest.raises(ValueError, match="kd.teacher_logits=cached needs a single process"):
        teacher_cache.resolve_mode("cached", processes=2, **small)


def test_a_bad_mode_is_refused_before_any_training(tmp_path):
    config = _kd_config()
    config.kd.teacher_logits = "sometimes"
    with pytest.raises(ConfigError, match="kd.teacher_logits"):
        lottery.run(config, tmp_path, log=lambda *_: None)


def test_carry_leaves_the_cache_behind(cached_study):
    workdir, _, _ = cached_study
    files = carry.carried_files(workdir)
    assert "results.jsonl" in files
    assert not any(name.startswith("teacher_logits/") for name in files)


@pytest.mark.parametrize("mode", ["cached", "auto"])
def test_a_cache_the_disk_cannot_hold_is_refused_before_the_dense_run(tmp_path, monkeypatch,
                                                                     mode):
    """KD runs that would cache the logits on a full file system are refused before anything
    trains, naming the setting and the shortfall; logits an earlier launch wrote count as held,
    and in_step needs no room."""
    config = _kd_config()
    config.kd.teacher_logits = mode
    need = teacher_cache.cache_bytes(Study(config, tmp_path / "probe", log=lambda *_: None,
                                           record=False).plan.total_steps,
                                     config.train.batch_size, 10)
    free = need // 2
    monkeypatch.setattr(teacher_cache.shutil, "disk_usage",
                        lambda path: type("Usage", (), {"free": free})())
    with pytest.raises(ConfigError) as info:
        lottery.run(config, tmp_path / "study", log=lambda *_: None)
    assert f"kd.teacher_logits='{mode}'" in str(info.value)
    assert "GiB more than its file system has free" in str(info.value)
    assert not (tmp_path / "study" / "results.jsonl").exists()
    written = tmp_path / "held" / "teacher_logits" / "0123"
    written.mkdir(parents=True)
    (written / "chunk.npy").write_bytes(b"\0" * (need - free))
    assert teacher_cache.missing_room(tmp_path / "held" / "teacher_logits", need) == 0
    assert teacher_cache.missing_room(tmp_path / "held" / "teacher_logits", need + 5) == 5
    config.kd.teacher_logits = "in_step"
    lottery.LotteryRun(config, tmp_path / "in_step", log=lambda *_: None).check_teacher_cache_room()


def test_switching_teacher_logits_to_in_step_keeps_the_studys_digest():
    """A resume that finds too little disk asks for kd.teacher_logits=in_step; a study saved with
    auto or cached then keeps its config digest (its snapshots still restore), as with any
    execution key, though in_step is also the key's pre-existing value (left out of digests)."""
    from lottery_kd.config import identity
    from tests.conftest import make_tiny_config
    config = make_tiny_config()
    for saved_value in ("auto", "cached", "in_step"):
        with config.unlocked():
            config.kd.teacher_logits = saved_value
        saved = identity.config_to_dict(config)
        digest = identity.config_digest(config, saved)
        for now in ("auto", "cached", "in_step"):
            with config.unlocked():
                config.kd.teacher_logits = now
            assert identity.config_digest(config, saved) == digest, (saved_value, now)
    with config.unlocked():
        config.kd.teacher_logits = "auto"
        config.train.lr = 2 * config.train.lr
    assert identity.config_digest(config, saved) != digest  # a result-deciding key still counts
