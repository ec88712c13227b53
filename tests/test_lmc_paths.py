"""The evaluation-only paths of `python -m lottery_kd.lmc` (analysis.lmc_paths): successive
levels of a chain (--levels) and a ticket against its pruned dense solution (--pruned-dense).

The path function is checked on a two-class network whose error at every alpha is known; the
command on a hand-made study: the tiny digits config, its snapshots written without training
(perturbed initial weights, masks pruned by the study's own masks_for), so it costs seconds."""

import json
import shutil
import struct

import jax
import numpy as np
import pytest

from lottery_kd.analysis import lmc, lmc_paths
from lottery_kd.study import lottery
from lottery_kd.study.variants import snapshot_name
from lottery_kd.training.trainer import Trainer
from tests.conftest import make_tiny_config

EYE, SWAP = np.eye(2), np.array([[0.0, 1.0], [1.0, 0.0]])
ALL = {"w1": np.ones((2, 2), bool), "w2": np.ones((2, 2), bool)}


def _two_layer(params, batch_stats, masks):
    """Inputs e0, e1 of classes 0, 1: logits = relu(x w1 + shift) w2 (argmax: class 0 on ties);
    (accuracy, mean cross-entropy)."""
    w1, w2 = (np.where(masks[k], np.asarray(params[k]), 0.0) for k in ("w1", "w2"))
    logits = np.maximum(EYE @ w1 + np.asarray(batch_stats["shift"]), 0.0) @ w2
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(np.mean(logits.argmax(-1) == [0, 1])), float(-log_p[[0, 1], [0, 1]].mean())


def _end(w1, w2, shift=0.0, masks=ALL):
    return {"params": {"w1": w1, "w2": w2}, "batch_stats": {"shift": np.full(2, shift)},
            "masks": masks}


def test_identical_ends_have_no_barrier():
    path = lmc_paths.path_errors(_two_layer, _end(EYE, EYE), _end(EYE, EYE), points=5)
    assert path["alphas"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert path["test_error"] == [0.0] * 5 and path["barrier"] == path["barrier_vs_mean"] == 0


def test_permuted_hidden_units_give_the_known_barrier_at_the_midpoint():
    # both ends compute the identity; halfway w1 = w2 = 0.5: equal logits, e1 misclassified
    path = lmc_paths.path_errors(_two_layer, _end(EYE, EYE), _end(SWAP, SWAP), points=5)
    assert path["test_error"] == [0.0, 0.0, 0.5, 0.0, 0.0]
    assert path["barrier"] == path["barrier_vs_mean"] == 0.5
    assert path["endpoint_errors"] == [0.0, 0.0]


def test_ends_of_unequal_error_barrier_above_their_line_not_their_mean():
    # w2 = I -> SWAP, w1 = I: right while alpha < 0.5, a tie (class 0) at 0.5, wrong after
    path = lmc_paths.path_errors(_two_layer, _end(EYE, EYE), _end(EYE, SWAP), points=5)
    assert path["test_error"] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert path["endpoint_errors"] == [0.0, 1.0]
    assert path["barrier"] == pytest.approx(0.25)  # 1.0 at alpha 0.75, the line 0.75 there
    assert path["barrier_vs_mean"] == pytest.approx(0.5)  # Frankle et al.'s, as --rewind's
    assert lmc_paths.linear_barrier([0, 0.5, 1], [0.9, 0.5, 0.1]) == 0.0  # a falling line


def test_the_path_interpolates_weights_and_statistics_under_the_union_of_the_masks():
    seen = []

    def record(params, batch_stats, masks):
        seen.append((params, batch_stats, masks))
        return 1.0, 0.0
    keep_a = {"w1": np.array([[True, False], [False, False]]), "w2": ALL["w2"]}
    keep_b = {"w1": np.array([[False, True], [False, False]]), "w2": ALL["w2"]}
    a = _end(2.0 * EYE, EYE, shift=1.0, masks=keep_a)
    b = _end(4.0 * SWAP, SWAP, shift=3.0, masks=keep_b)
    lmc_paths.path_errors(record, a, b, points=3)
    np.testing.assert_array_equal(seen[0][0]["w1"], a["params"]["w1"])  # the ends exactly
    np.testing.assert_array_equal(seen[-1][0]["w1"], b["params"]["w1"])
    np.testing.assert_allclose(seen[1][0]["w1"], EYE + 2.0 * SWAP)
    np.testing.assert_allclose(seen[1][1]["shift"], [2.0, 2.0])
    for _, _, masks in seen:
        np.testing.assert_array_equal(masks["w1"], [[True, True], [False, False]])


def test_the_pruned_dense_end_is_the_mask_times_the_source_weights():
    source = {"params": {"w": np.arange(1.0, 7.0, dtype=np.float32).reshape(2, 3)},
              "batch_stats": {"mean": np.array([0.5, -0.5], np.float32)}}
    masks = {"w": np.array([[True, False, True], [False, False, True]])}
    end = lmc_paths.pruned_solution(source, masks)
    np.testing.assert_array_equal(end["params"]["w"], [[1.0, 0.0, 3.0], [0.0, 0.0, 6.0]])
    assert end["batch_stats"] is source["batch_stats"] and end["masks"] is masks


# --------------------------------------------------------------------------------------------
# the command on a hand-made study


def _weights(template, seed):
    """Random weights of the template's shapes (numpy: no compilation), BatchNorm at rest."""
    rng = np.random.default_rng(seed)

    def leaf(path, shape):
        name = jax.tree_util.keystr(path)
        if "var" in name or "scale" in name:
            return np.ones(shape.shape, np.float32)
        if "mean" in name or "bias" in name:
            return np.zeros(shape.shape, np.float32)
        fan_in = int(np.prod(shape.shape[:-1]))
        return (rng.standard_normal(shape.shape) / np.sqrt(fan_in)).astype(np.float32)
    return jax.tree_util.tree_map_with_path(leaf, template)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """An iterative digits study of levels 1 and 2 for lt and kd (lr_rewind listed, never run),
    made without training: each snapshot holds random weights under the masks the study itself
    prunes from the previous snapshot of its chain."""
    config = make_tiny_config()
    config.train.epochs = 1
    config.lottery.variants = "lt,kd,lr_rewind"
    config.lottery.rewind = "0it"
    workdir = tmp_path_factory.mktemp("lmc_paths") / "study"
    run = lottery.LotteryRun(config, workdir, log=lambda *_: None)
    template = run.snapshot_template()
    everything = jax.tree.map(lambda m: np.ones(m.shape, bool), template["masks"])
    for i, (level, variant) in enumerate([(0, "dense"), (1, "lt"), (1, "kd"), (2, "lt"),
                                          (2, "kd")]):
        masks = everything if level == 0 else run.masks_for(level, variant)
        params = _weights(template["params"], i)
        run.snapshots.save(snapshot_name(level, variant), run.parallel.replicate(
            {"params": jax.tree.map(lambda p, m: np.where(m, p, np.float32(0)), params, masks),
             "batch_stats": _weights(template["batch_stats"], i), "masks": masks}))
    run.snapshots.close()
    return workdir


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _own_error(tool, snapshot):
    """A snapshot's test error under its own mask, as the study evaluates a ticket."""
    run = tool.run
    accuracy, _ = run.trainer.evaluate(snapshot["params"], snapshot["batch_stats"],
                                       run.parallel.replicate(snapshot["masks"]), run.data.test)
    return 1.0 - accuracy


def test_levels_and_pruned_dense_on_a_study(study, tmp_path, capsys):
    out = tmp_path / "out"
    for mode, flag in (("levels", "--levels"), ("pruned_dense", "--pruned-dense")):
        assert lmc.main([str(study), flag, "--variants", "lt,kd", "--points", "3",
                         "--out", str(out)]) == 0
        assert f"wrote {out / f'lmc_{mode}.md'}" in capsys.readouterr().out
    tool = lmc_paths.SnapshotPaths(study, log=lambda *_: None)
    levels = json.loads((out / "lmc_levels.json").read_text())
    assert [(p["variant"], p["start"], p["end"]) for p in levels["paths"]] == [
        ("lt", "level_0_dense", "level_1_lt"), ("lt", "level_1_lt", "level_2_lt"),
        ("kd", "level_0_dense", "level_1_kd"), ("kd", "level_1_kd", "level_2_kd")]
    for path in levels["paths"]:
        assert path["test_error"][0] == pytest.approx(
            _own_error(tool, tool.run.load_snapshot(path["start"])), abs=1e-9)
        assert path["test_error"][-1] == pytest.approx(
            _own_error(tool, tool.run.load_snapshot(path["end"])), abs=1e-9)
        assert path["barrier"] == lmc_paths.linear_barrier(path["alphas"], path["test_error"])
    pruned = json.loads((out / "lmc_pruned_dense.json").read_text())
    assert [(p["variant"], p["start"], p["end"]) for p in pruned["paths"]] == [
        ("lt", "level_1_lt", "level_0_dense"), ("lt", "level_2_lt", "level_1_lt"),
        ("kd", "level_1_kd", "level_0_dense"), ("kd", "level_2_kd", "level_1_kd")]
    for path, pair in zip(pruned["paths"], tool.pairs("pruned_dense", ["lt", "kd"])):
        ticket, end = tool.endpoints("pruned_dense", pair)
        source = tool.run.load_snapshot(pair.end)
        for got, weights, keep in zip(*(jax.tree.leaves(t) for t in (
                end["params"], source["params"], ticket["masks"]))):
            np.testing.assert_array_equal(np.asarray(got), np.where(keep, weights, 0.0))
        assert path["sparsity"][0] == path["sparsity"][1] > 0
        assert path["test_error"][-1] == pytest.approx(_own_error(tool, end), abs=1e-9)
    table = (out / "lmc_pruned_dense.md").read_text()
    assert "| 2 | kd | 36.00 |" in table and "lmc_pruned_dense.png" in table
    assert "| 1 → 2 | lt | 20.00 → 36.00 |" in (out / "lmc_levels.md").read_text()
    for mode in ("levels", "pruned_dense"):
        width, height = _png_size(out / f"lmc_{mode}.png")
        assert width >= 800 and height >= 400
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"lmc_{m}.{e}" for m in ("levels", "pruned_dense") for e in ("json", "md", "png"))


@pytest.fixture
def no_evaluation(monkeypatch):
    def evaluate(*args, **kwargs):
        raise AssertionError("evaluated although an argument is bad")
    monkeypatch.setattr(Trainer, "evaluate", evaluate)


@pytest.mark.parametrize("arguments, message", [
    (["--levels", "--variants", "lt,nope"], "--variants nope: not a variant of this study"),
    (["--levels", "--variants", "lr_rewind"], "no trained lr_rewind ticket yet"),
    (["--pruned-dense", "--variants", "kd,lr_rewind"], "no trained lr_rewind ticket yet"),
    (["--levels", "--pruned-dense", "--variants", "lt"], "--levels and --pruned-dense are two"),
    (["--levels", "--variants", "lt", "--rewind", "1ep"], "--rewind (of the --rewind mode)"),
    (["--pruned-dense", "--variants", "lt", "--ticket", "level_1_lt"], "--ticket"),
    (["--levels"], "--levels needs --variants"),
    (["--variants", "lt"], "--variants goes with --levels or --pruned-dense"),
    (["--levels", "--variants", "lt", "--points", "2"], "--points must be >= 3")])
def test_bad_arguments_are_one_line_before_any_evaluation(study, tmp_path, capsys,
                                                          no_evaluation, arguments, message):
    out = tmp_path / "out"
    assert lmc.main([str(study), *arguments, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_a_missing_snapshot_of_the_chain_or_an_unusable_out_is_refused(study, tmp_path, capsys,
                                                                       no_evaluation):
    broken = tmp_path / "broken"
    shutil.copytree(study, broken)
    shutil.rmtree(broken / "checkpoints" / "snapshots" / "level_1_kd")
    out = tmp_path / "out"
    for flag in ("--levels", "--pruned-dense"):
        assert lmc.main([str(broken), flag, "--variants", "lt,kd", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag} needs snapshot 'level_1_kd'") and \
            "restore it" in err, err
    shutil.rmtree(broken / "checkpoints" / "snapshots" / "level_0_dense")
    assert lmc.main([str(broken), "--levels", "--variants", "lt", "--out", str(out)]) == 2
    assert "no trained dense network (level_0_dense)" in capsys.readouterr().err
    assert not out.exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert lmc.main([str(study), "--levels", "--variants", "lt", "--out", str(a_file)]) == 2
    assert f"--out {a_file} is a file" in capsys.readouterr().err
    assert lmc.main([str(study), "--levels", "--variants", "lt", "--out", str(study)]) == 2
    assert "is inside the study" in capsys.readouterr().err
