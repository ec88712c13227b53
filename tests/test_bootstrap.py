"""The Deep Bootstrap (python -m lottery_kd.bootstrap) on a digits study, and its plot."""

import numpy as np
import pytest

from lottery_kd.analysis import bootstrap
from lottery_kd.study import lottery
from lottery_kd.training.trainer import Trainer
from tests.analysis_helpers import _beside, _captured, _png_size


def test_a_killed_deep_bootstrap_resumes_inside_its_world_and_ends_as_an_uninterrupted_one(
        studies, tmp_path, monkeypatch):
    (first, _), _ = studies
    settings = dict(real_size=300, tickets=("level_2_lt",), distill_options=(True,), steps=15,
                    eval_every=5, log=lambda *_: None)
    whole = bootstrap.run_bootstrap(first, tmp_path / "whole", **settings)
    fits, crash = [], [True]
    original = Trainer.fit

    def crash_in_the_second_chunk(trainer, state, masks, **kwargs):
        fits.append(int(state.step))
        if crash[0] and len(fits) == 2:
            raise KeyboardInterrupt  # a kill 5 steps into the real world
        return original(trainer, state, masks, **kwargs)

    monkeypatch.setattr(Trainer, "fit", crash_in_the_second_chunk)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        bootstrap.run_bootstrap(first, out, **settings)
    assert (out / "checkpoints" / "level_2_lt_kd_real").is_dir()
    with pytest.raises(ValueError, match="other settings"):  # --out is claimed already
        bootstrap.run_bootstrap(first, out, **{**settings, "steps": 10})
    fits.clear()
    crash[0] = False
    resumed = bootstrap.run_bootstrap(first, out, **settings)
    assert fits == [5, 10, 0, 5, 10]  # the real world from its checkpoint, then the ideal one
    assert resumed["comparisons"] == whole["comparisons"]
    assert not (out / "checkpoints").exists()


def test_deep_bootstrap_real_vs_ideal_for_dense_and_a_ticket_with_and_without_kd(studies,
                                                                                   tmp_path):
    (first, _), _ = studies
    out = tmp_path / "bootstrap"
    saved = bootstrap.run_bootstrap(first, out, real_size=300, tickets=("", "level_2_lt"),
                                    distill_options=(False, True), eval_every=5,
                                    log=lambda *_: None)
    tags = [c["tag"] for c in saved["comparisons"]]
    assert tags == ["dense", "dense_kd", "level_2_lt", "level_2_lt_kd"]
    by_tag = {c["tag"]: c for c in saved["comparisons"]}
    for plain, distilled in (("dense", "dense_kd"), ("level_2_lt", "level_2_lt_kd")):
        assert by_tag[plain]["real"] != by_tag[distilled]["real"]  # the KD flag is used
    assert by_tag["dense"]["sparsity"] == 0.0 and by_tag["level_2_lt"]["sparsity"] > 0.3
    steps = saved["settings"]["steps"]
    assert steps == (1257 - 300) // 64
    for comparison in saved["comparisons"]:
        assert tuple(comparison) == bootstrap.COMPARISON_FIELDS  # what a resume checks for
        assert comparison["steps"][-1] == steps
        assert comparison["gap"] == pytest.approx(
            [r["test_error"] - i["test_error"] for r, i in zip(comparison["real"],
                                                                comparison["ideal"])])
    assert _png_size(out / "bootstrap.png")[0] >= 400
    assert "| level_2_lt_kd | 36.0 |" in (out / "bootstrap.md").read_text()
    world = bootstrap.DeepBootstrap(first, 300)
    whole = np.concatenate([world.real.train_images, world.ideal.train_images])
    assert len(world.real.train_labels) == 300 and len(whole) == 1257  # a split, nothing lost
    study_train = lottery.LotteryRun.from_workdir(first, log=lambda *_: None).data.train
    assert len(whole) == study_train.num_examples  # the study's training split, no more
    with pytest.raises(ValueError, match="--real-size"):
        bootstrap.split_worlds(world.real, 5000)


def test_bootstrap_plot_draws_the_zero_gap_and_one_legend_beside_the_panels(monkeypatch,
                                                                            tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    def world(errors):
        return [{"test_error": e} for e in errors]

    comparisons = [{"tag": tag, "sparsity": sparsity, "steps": [5, 10],
                    "real": world(real), "ideal": world(ideal),
                    "gap": [r - i for r, i in zip(real, ideal)]}
                   for tag, sparsity, real, ideal in (("dense", 0.0, [0.5, 0.3], [0.5, 0.2]),
                                                      ("level_2_lt", 0.36, [0.6, 0.4],
                                                       [0.6, 0.35]))]
    figures = _captured(monkeypatch)
    bootstrap._plot(comparisons, "boot", tmp_path / "b.png")
    [figure] = figures
    errors, gaps = figure.axes
    assert errors.get_legend() is None
    labels = [t.get_text() for t in gaps.get_legend().get_texts()]
    assert labels[:2] == ["dense (0.0 % sparse)", "level_2_lt (36.0 % sparse)"]
    assert any("real" in label for label in labels) and any("ideal" in label for label in labels)
    assert any(list(line.get_ydata()) == [0, 0] for line in gaps.get_lines())  # no gap
    real, ideal = errors.get_lines()[:2]
    assert to_hex(real.get_color()) == to_hex(ideal.get_color())
    assert (real.get_linestyle(), ideal.get_linestyle()) == ("-", "--")
    figure.canvas.draw()
    assert _beside(gaps.get_window_extent(), gaps.get_legend().get_window_extent())
    plt.close("all")


def test_a_chunks_train_metrics_weigh_each_row_by_its_steps():
    """Steps 50-100 of the real world, with an epoch end at 78: the chunk's train accuracy is
    over all 50 steps (28 at 0.5, 22 at 0.8), not the last row's 22, as the ideal world's is."""
    history = [{"step": 78, "train_accuracy": 0.5, "train_loss": 1.0, "test_accuracy": 0.4},
               {"step": 100, "train_accuracy": 0.8, "train_loss": 0.5, "test_accuracy": 0.45}]
    found = bootstrap.chunk_train_metrics(history, 50)
    assert found == pytest.approx({"train_accuracy": (28 * 0.5 + 22 * 0.8) / 50,
                                   "train_loss": (28 * 1.0 + 22 * 0.5) / 50})
    assert bootstrap.chunk_train_metrics(history[1:], 50)["train_accuracy"] == 0.8
