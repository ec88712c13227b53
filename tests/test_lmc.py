"""Linear mode connectivity (python -m lottery_kd.lmc) on a digits study, and its plot."""

import json

import jax
import numpy as np
import pytest

from lottery_kd.analysis import bootstrap, curves, lmc
from lottery_kd.kernels import conv3x3
from lottery_kd.study import lottery
from lottery_kd.study.checkpoint_meta import read_fingerprint
from tests.analysis_helpers import _beside, _captured, _png_size


def test_barrier_by_hand():
    assert lmc.error_barrier([0.1, 0.3, 0.5, 0.2]) == pytest.approx(0.5 - 0.15)
    assert lmc.error_barrier([0.2, 0.1, 0.2]) == pytest.approx(0.0)
    tree = {"w": np.array([0.0, 2.0])}
    np.testing.assert_allclose(lmc.interpolate(tree, {"w": np.array([4.0, 6.0])}, 0.25)["w"],
                               [1.0, 3.0])


def test_lmc_plot_marks_the_endpoints_mean_and_keeps_its_legend_off_the_paths(monkeypatch,
                                                                              tmp_path):
    import matplotlib.pyplot as plt
    results_in = [{"rewind_step": k, "rewind_epoch": k / 10, "alphas": [0, 0.5, 1],
                   "test_error": errors, "barrier": lmc.error_barrier(errors),
                   "sparsity": 0.9}
                  for k, errors in ((0, [0.1, 0.3, 0.2]), (10, [0.1, 0.12, 0.1]))]
    figures = _captured(monkeypatch)
    lmc._plot(results_in, "LMC", tmp_path / "l.png")
    [figure] = figures
    axes = figure.axes[0]
    labels = [t.get_text() for t in axes.get_legend().get_texts()]
    assert labels == ["rewind to step 0 (epoch 0): barrier 15.00 points",
                      "rewind to step 10 (epoch 1): barrier 2.00 points"]
    means = sorted(line.get_ydata()[0] for line in axes.get_lines()
                   if line.get_linestyle() == ":")
    assert means == pytest.approx([10.0, 15.0])
    assert "90.0 % sparse" in axes.get_title()
    figure.canvas.draw()
    assert _beside(axes.get_window_extent(), axes.get_legend().get_window_extent())
    plt.close("all")


@pytest.fixture(scope="module")
def lmc_sweep(studies, tmp_path_factory):
    """An uninterrupted LMC sweep of the first study at 0it and 1ep (5 points)."""
    (first, _), _ = studies
    out = tmp_path_factory.mktemp("lmc") / "lmc"
    return out, lmc.run_sweep(first, ["0it", "1ep"], out, points=5, log=lambda *_: None)


def test_lmc_on_digits_gives_barriers_for_rewind_0_and_a_later_step(studies, lmc_sweep,
                                                                    tmp_path, monkeypatch):
    (first, _), _ = studies
    out, saved = lmc_sweep
    assert [r["rewind_step"] for r in saved["results"]] == [0, 19]
    for result in saved["results"]:
        assert tuple(result) == lmc.RESULT_FIELDS  # what a resume checks an item for
        assert len(result["test_error"]) == 5 and result["alphas"] == [0, 0.25, 0.5, 0.75, 1]
        assert result["barrier"] == pytest.approx(lmc.error_barrier(result["test_error"]))
        assert result["endpoint_errors"][0] != result["endpoint_errors"][1] or \
            result["test_error"][2] != result["test_error"][0]  # the copies really differ
    assert _png_size(out / "lmc.png")[0] >= 400
    assert "| 19 | 1 |" in (out / "lmc.md").read_text()
    # A ticket with KD, its two copies on the data orders seed+1 and seed+2 ...
    data_seeds, original = [], lmc.LinearModeConnectivity._trainer

    def record(self, data_seed, conv_impl):
        data_seeds.append(data_seed)
        return original(self, data_seed, conv_impl)

    monkeypatch.setattr(lmc.LinearModeConnectivity, "_trainer", record)
    ticket = lmc.run_sweep(first, ["1ep"], tmp_path / "ticket", ticket="level_2_kd",
                           distill=True, points=3, log=lambda *_: None)
    seed = lottery.LotteryRun.from_workdir(first, log=lambda *_: None).config.seed
    assert data_seeds == [seed + 1, seed + 2]
    assert ticket["results"][0]["sparsity"] == pytest.approx(0.36, abs=1e-3)
    # ... and the command, rerun with the same settings, does nothing new and succeeds.
    before = (out / "lmc.json").read_text()
    assert lmc.main([str(first), "--rewind", "0it,1ep", "--out", str(out), "--points", "5"]) == 0
    assert data_seeds == [seed + 1, seed + 2]  # nothing trained
    assert json.loads((out / "lmc.json").read_text())["results"] == json.loads(before)["results"]
    with pytest.raises(ValueError, match="other settings"):
        lmc.run_sweep(first, ["0it"], out, points=7, log=lambda *_: None)


def test_lmc_spawns_from_the_studys_cross_entropy_trajectory_even_with_distill(studies,
                                                                                tmp_path):
    """The spawn point is the dense run's state at step k: retraining it reproduces the
    study's rewind snapshot bit for bit, and --distill (which trains the copies with KD) does
    not change it."""
    (first, _), _ = studies
    plain = lmc.LinearModeConnectivity(first, log=lambda *_: None)
    distilled = lmc.LinearModeConnectivity(first, ticket="level_2_kd", distill=True,
                                           log=lambda *_: None)
    k = plain.plan.rewind_step
    rewind = plain.run.load_snapshot("rewind")
    init = plain.run.load_snapshot("init")
    retrained = plain._fit(None, init, init["masks"], 0, k, "check", tmp_path, distill=False)
    for a, b in zip(jax.tree.leaves(retrained.state.params), jax.tree.leaves(rewind["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(distilled.spawn_point(k, tmp_path)["params"]),
                    jax.tree.leaves(rewind["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(distilled.spawn_point(5, tmp_path)["params"]),
                    jax.tree.leaves(plain.spawn_point(5, tmp_path)["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_killed_lmc_sweep_resumes_inside_its_copy_and_ends_as_an_uninterrupted_one(
        studies, lmc_sweep, tmp_path, monkeypatch):
    (first, _), _ = studies
    whole = [r for r in lmc_sweep[1]["results"] if r["rewind_step"] == 19]
    fits = []
    original = lmc.LinearModeConnectivity._fit

    def crash_on_the_second_copy(self, data_seed, start, masks, start_step, num_steps, tag, out,
                                 **kwargs):
        fits.append(tag)
        if tag.endswith("copy2") and len(fits) == 2:
            raise KeyboardInterrupt  # a kill after copy 1 was trained and checkpointed
        return original(self, data_seed, start, masks, start_step, num_steps, tag, out, **kwargs)

    monkeypatch.setattr(lmc.LinearModeConnectivity, "_fit", crash_on_the_second_copy)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        lmc.run_sweep(first, ["1ep"], out, points=5, log=lambda *_: None)
    copy1 = out / "checkpoints" / "k19_copy1"
    recorded = [read_fingerprint(p) for p in copy1.iterdir() if p.name.isdigit()]
    assert recorded and all(  # the path it trained on, which a resume keeps
        f["conv_impl"] == json.loads((first / "config.json").read_text())["model"]["conv_impl"]
        and f["conv_routing"] == conv3x3.CONV_ROUTING for f in recorded)
    with pytest.raises(ValueError, match="other settings"):  # --out is claimed already
        lmc.run_sweep(first, ["1ep"], out, points=5, distill=True, log=lambda *_: None)
    resumed = lmc.run_sweep(first, ["1ep"], out, points=5, log=lambda *_: None)
    assert resumed["results"] == whole
    assert not (out / "checkpoints").exists()
    events = sorted((out / "tensorboard" / "k19_copy1").iterdir(), key=curves._written_at)
    assert len(events) == 2  # copy 1 ran twice, and the second time trained no epoch
    assert not [e for e in curves._events(events[1].read_bytes()) if e.summary.value]


def test_analysis_tools_name_a_missing_ticket_and_the_ones_there(studies, tmp_path,
                                                                 capsys):
    (first, _), _ = studies
    with pytest.raises(ValueError, match=r"--ticket 'level_9_lt': no such snapshot .*tickets "
                                         r"there: .*level_1_lt"):
        lmc.run_sweep(first, ["0it"], tmp_path / "lmc", ticket="level_9_lt",
                      log=lambda *_: None)
    code = lmc.main([str(first), "--ticket", "level_9_kd", "--out", str(tmp_path / "cli")])
    assert code == 2 and "--ticket 'level_9_kd': no such snapshot" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--ticket 'level_9_kd': no such snapshot"):
        bootstrap.DeepBootstrap(first, 300).compare(ticket="level_9_kd", distill=False,
                                                    steps=10, eval_every=5, out=tmp_path)
