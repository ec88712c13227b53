"""The figures of accuracy against sparsity, per-layer ticket densities and learning curves."""

import pytest

from lottery_kd import published as published_lib
from lottery_kd.analysis import curves, report
from lottery_kd.study import results
from tests.analysis_helpers import _beside, _captured, _png_size


def test_network_order_puts_the_stem_first_blocks_naturally_and_fc_last():
    forward = ["stem_conv/kernel", "stage1_block1/conv1/kernel", "stage1_block1/conv2/kernel",
               "stage1_block2/conv1/kernel", "stage1_block2/conv2/kernel",
               "stage1_block10/conv1/kernel", "stage2_block1/conv1/kernel",
               "stage2_block1/conv2/kernel", "stage2_block1/conv3/kernel",
               "stage2_block1/shortcut_conv/kernel", "stage10_block1/conv1/kernel", "fc/kernel"]
    assert report.network_order(sorted(forward)) == forward
    assert report.network_order(forward[::-1]) == forward
    small = ["conv1/kernel", "conv2/kernel", "conv10/kernel", "fc/kernel"]
    assert report.network_order(sorted(small)) == small
    # unknown names after the known ones, in the order given
    assert report.network_order(["zeta/kernel", "fc/kernel", "alpha/kernel", "stem_conv/kernel"]) \
        == ["stem_conv/kernel", "fc/kernel", "zeta/kernel", "alpha/kernel"]


def _layer_rows(level, sparsity, variants, counts):
    return [{"level": level, "variant": v, "sparsity": sparsity, "test_accuracy": 0.8,
             "layer_counts": counts(v)} for v in variants]


def test_layer_densities_draw_one_line_per_distinct_mask_in_network_order(monkeypatch,
                                                                          tmp_path):
    import matplotlib.pyplot as plt
    variants = ["lt", "reinit", "weight_rewind", "lr_rewind", "kd", "kd_rewind"]
    layers = ["stem_conv/kernel", "stage1_block1/conv1/kernel", "stage1_block1/conv2/kernel",
              "stage2_block1/conv1/kernel", "stage2_block1/conv2/kernel",
              "stage2_block1/shortcut_conv/kernel"]

    def one_shot(kept):  # every variant shares the mask; JSON keys sorted as older rows hold them
        return lambda _: {layer: [kept, 100] for layer in sorted(layers)}

    def iterative(variant):  # the chains part after level 1; lt and kd happen to agree
        kept = {"lt": 20, "kd": 20}.get(variant, 10 + variants.index(variant))
        return {layer: [kept if layer.startswith("stage2") else 50, 100] for layer in layers}

    rows = ([{"level": 0, "variant": "dense", "sparsity": 0.0, "test_accuracy": 0.9,
              "layer_counts": one_shot(100)(None)}]
            + _layer_rows(1, 0.4, variants, one_shot(60))
            + _layer_rows(2, 0.8322, variants, iterative))
    densities = report.layer_densities([{"config": {"seed": 0}, "rows": rows}])
    assert list(densities) == ["40.00 % (all 6 variants)", "83.22 %: lt, kd", "83.22 %: reinit",
                               "83.22 %: weight_rewind", "83.22 %: lr_rewind",
                               "83.22 %: kd_rewind"]
    for per_layer in densities.values():
        assert list(per_layer) == layers  # network order, not the rows' sorted keys
    assert densities["83.22 %: lt, kd"]["stage2_block1/conv1/kernel"] == 0.2
    # a (variant, sparsity) ticket counts once, from the first run that holds it; a seed
    # prefix only where several seeds contribute lines
    second = [{"config": {"seed": 1}, "rows": _layer_rows(1, 0.4, variants, one_shot(59))}]
    first = [{"config": {"seed": 0}, "rows": rows[:7]}]
    assert list(report.layer_densities(first + second)) == ["40.00 % (all 6 variants)"]
    first[0]["rows"] = rows[:4]  # seed 0 without weight_rewind and the rest
    assert list(report.layer_densities(first + second)) == [
        "s0 40.00 % (all 3 variants)", "s1 40.00 %: lr_rewind, kd +1"]
    many = report.layer_densities([{"config": {"seed": 0}, "rows": _layer_rows(
        1, 0.4, variants[:4], one_shot(60)) + _layer_rows(1, 0.4, variants[4:], one_shot(61))}])
    assert list(many) == ["40.00 %: lt, reinit +2", "40.00 %: kd, kd_rewind"]

    figures = []
    monkeypatch.setattr(plt, "close", lambda figure: figures.append(figure))
    report._plot_layers(densities, "layers", tmp_path / "layers.png")
    [figure] = figures
    axes = figure.axes[0]
    assert len(axes.get_lines()) == len(densities)
    assert [t.get_text() for t in axes.get_xticklabels()] == \
        [layer.replace("/kernel", "") for layer in layers]
    figure.canvas.draw()
    legend = axes.get_legend().get_window_extent()
    assert legend.x0 >= axes.get_window_extent().x1  # beside the data, not on it
    plt.close("all")


def _accuracy_rows(iterative):
    """Rows of a 3-level study: one-shot (every variant at one sparsity per level) or iterative
    (each chain at its own sparsities), written in level order as append_row does."""
    rows = [{"level": 0, "variant": "dense", "sparsity": 0.0, "test_accuracy": 0.9}]
    for level, sparsity in ((1, 0.59), (2, 0.8322), (3, 0.9313)):
        for k, variant in enumerate(("lt", "weight_rewind", "kd")):
            rows.append({"level": level, "variant": variant,
                         "sparsity": sparsity + (0.001 * k if iterative else 0.0),
                         "test_accuracy": 0.88 - 0.02 * level + 0.005 * k,
                         "test_accuracy_at_best_val": None, "best_val_epoch": None,
                         "epochs": 2.0, "seconds": 1.0})
    return rows


@pytest.mark.parametrize("iterative", [False, True])
def test_variant_points_run_from_the_dense_point_towards_sparse(iterative):
    rows = _accuracy_rows(iterative)
    for variant in ("lt", "weight_rewind", "kd"):
        points = results.variant_points(rows, variant)
        densities = [density for density, _ in points]
        assert densities[0] == 1.0 and len(points) == 4
        assert all(a > b for a, b in zip(densities, densities[1:])), densities


@pytest.mark.parametrize("iterative", [False, True])
def test_accuracy_vs_sparsity_plot_lines_never_double_back(iterative, monkeypatch, tmp_path):
    import matplotlib.pyplot as plt
    rows = _accuracy_rows(iterative)
    figures = []
    monkeypatch.setattr(plt, "close", lambda figure: figures.append(figure))
    drawn = results.plot_accuracy_vs_sparsity(rows, tmp_path / "a.png", "study")
    [figure] = figures
    lines = {line.get_label(): list(zip(line.get_xdata(), line.get_ydata()))
             for line in figure.axes[0].get_lines() if line.get_label() != "dense"}
    assert list(lines) == ["lt", "weight_rewind", "kd"]
    for variant, line in lines.items():
        xs = [x for x, _ in line]
        assert len(xs) == 4 and xs[0] == 1.0, (variant, xs)
        assert all(a > b for a, b in zip(xs, xs[1:])), (variant, xs)
        accuracy = {round(1 - r["sparsity"], 6): 100 * r["test_accuracy"] for r in rows
                    if r["variant"] in (variant, "dense")}
        assert [y for _, y in line] == pytest.approx([accuracy[round(x, 6)] for x in xs])
        assert drawn[variant] == pytest.approx(line)
    assert _png_size(tmp_path / "a.png")[0] >= 400
    plt.close("all")


def test_density_ticks_merge_the_chains_of_a_level_into_one_readable_tick(monkeypatch,
                                                                         tmp_path):
    import matplotlib.pyplot as plt
    ticks = results.density_ticks([0.41, 0.4095, 0.41, 0.168, 0.0078])
    assert [label for _, label in ticks] == ["59.0–59.1", "83.2", "99.2"]
    assert ticks[0][0] == pytest.approx((0.41 * 0.4095) ** 0.5)
    figures = _captured(monkeypatch)
    results.plot_accuracy_vs_sparsity(_accuracy_rows(True), tmp_path / "a.png", "study")
    [figure] = figures
    labels = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert labels == ["0.0", "59.0–59.2", "83.2–83.4", "93.1–93.3"]  # one per level
    plt.close("all")


def test_collapsed_flags_only_runs_far_below_their_group_and_never_a_majority():
    assert results.collapsed([[90, 89, 88, 60], [80, 79, 78, 20]]) == \
        [[False, False, False, True], [False, False, False, True]]
    assert results.collapsed([[83.2, 82.5, 82.8, 78.9]]) == [[False] * 4]  # a real gap: kept
    assert results.collapsed([[90, 10, 12]]) == [[False] * 3]  # most collapsed: nothing to cut


@pytest.mark.parametrize("collapse", [True, False])
def test_a_collapsed_run_is_left_below_a_cut_axis_and_named(collapse, monkeypatch, tmp_path):
    import matplotlib.pyplot as plt
    rows = _accuracy_rows(False)
    rows += [dict(r, variant="finetune", test_accuracy=(0.2 if collapse else 0.79)
                  if r["level"] == 3 else r["test_accuracy"])
             for r in rows if r["variant"] == "lt"]
    figures = _captured(monkeypatch)
    drawn = results.plot_accuracy_vs_sparsity(rows, tmp_path / "a.png", "study")
    [figure] = figures
    axes = figure.axes[0]
    assert drawn["finetune"][-1][1] == pytest.approx(20.0 if collapse else 79.0)  # all drawn
    low, high = axes.get_ylim()
    assert high >= 90  # the dense line
    assert "end of training" in axes.get_ylabel()
    if collapse:
        assert 20 < low <= 81.5  # lt at level 3 is the lowest kept point
        assert "below the axis: finetune 20.0" in axes.get_xlabel()
        assert len(axes.collections) == 1  # its marker on the bottom edge
    else:
        assert low < 79 and "below" not in axes.get_xlabel()
    figure.canvas.draw()
    assert _beside(axes.get_window_extent(), axes.get_legend().get_window_extent())
    plt.close("all")


def _entries(published_variants=("lt", "weight_rewind", "kd")):
    """report.aggregate-style entries: dense and three variants at two sparsities, n=2."""
    out = [{"variant": "dense", "sparsity": 0.0, "level": 0, "final_mean": 0.92,
            "final_std": 0.0, "n": 2, "best_val_mean": 0.92, "best_val_std": 0.0,
            "best_val_n": 2}]
    for level, sparsity in ((1, 0.59), (2, 0.8322)):
        for k, variant in enumerate(published_variants):
            mean = 0.9 - 0.02 * level - 0.01 * k
            out.append({"variant": variant, "sparsity": sparsity, "level": level,
                        "final_mean": mean, "final_std": 0.003, "n": 2,
                        "best_val_mean": mean, "best_val_std": 0.003, "best_val_n": 2})
    return out


def test_report_accuracy_plot_ties_published_lines_to_their_variant_and_explains_bars(
        monkeypatch, tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex
    reference = published_lib.load(report.REFERENCE)
    published = report.published_for("resnet20", "cifar10", reference)
    figures = _captured(monkeypatch)
    report._plot_accuracy(_entries(), published, False, "resnet20 on cifar10",
                          tmp_path / "a.png", "best_val")
    [figure] = figures
    axes = figure.axes[0]
    bars = {c.get_label(): c.lines[0] for c in axes.containers}
    assert list(bars) == ["lt", "weight_rewind", "kd"]
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert to_hex(lines["published lt (rewind_to_0)"].get_color()) == \
        to_hex(bars["lt"].get_color())
    assert to_hex(lines["published weight_rewind (best_weight_rewinding)"].get_color()) == \
        to_hex(bars["weight_rewind"].get_color())
    colors = [to_hex(line.get_color()) for line in bars.values()]
    assert len(set(colors)) == 3 and to_hex("gray") not in colors
    for density in (0.41, 0.1678):  # shifted sideways a little, in the variants' order
        xs = [x for line in bars.values() for x in line.get_xdata()
              if abs(x / density - 1) < 0.1]
        assert len(xs) == 3 and xs == sorted(xs) and len(set(xs)) == 3
        assert all(abs(x / density - 1) > 1e-3 for x in xs)  # off the published markers
    for line in bars.values():
        assert list(line.get_xdata()) == sorted(line.get_xdata())  # never doubles back
    legend = axes.get_legend()
    assert "other protocol" in legend.get_title().get_text()
    assert all("protocol" not in t.get_text() for t in legend.get_texts())  # said once
    assert "n=2" in axes.get_title() and "± 1 std" in axes.get_title()
    assert "best-validation epoch" in axes.get_ylabel()
    # every published density has its tick, labelled as a sparsity (20 % is published only)
    assert "20.0" in [t.get_text() for t in axes.get_xticklabels()]
    plt.close("all")


def _curve(variant, sparsity, finals, n=2):
    epochs = [1.0, 2.0, 3.0, 4.0]
    return {"level": 1, "sparsity": sparsity, "variant": variant, "n": n, "epochs": epochs,
            "test_accuracy_mean": [f * e / 4 for e, f in zip(epochs, [finals] * 4)],
            "test_accuracy_std": [0.01] * 4}


def test_learning_curves_share_one_legend_and_the_zoom_leaves_a_collapsed_run_below(
        monkeypatch, tmp_path):
    import matplotlib.pyplot as plt
    curves_in = [_curve("dense", 0.0, 0.95)]
    variants = ["lt", "weight_rewind", "kd", "finetune"]
    curves_in += [_curve(v, 0.5, f) for v, f in zip(variants, (0.9, 0.89, 0.91, 0.88))]
    curves_in += [_curve(v, 0.9, f, n=1) for v, f in zip(variants, (0.8, 0.81, 0.82, 0.2))]
    figures = _captured(monkeypatch)
    curves.plot_curves(curves_in, ["dense"] + variants, "tiny", tmp_path / "c.png")
    [figure] = figures
    assert all(axes.get_legend() is None for axes in figure.axes)
    [legend] = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["dense (n=2 runs)"] + variants
    figure.canvas.draw()
    assert all(_beside(axes.get_window_extent(), legend.get_window_extent())
               for axes in figure.axes)
    top, zoom = figure.axes[0:2], figure.axes[2:4]
    assert "n=2 runs per variant" in top[0].get_title()
    assert "n=1 run per variant" in top[1].get_title()
    assert zoom[0].get_xlabel() == "epoch"  # nothing collapsed at 50 %
    # the zoom's y-axis fits the last quarter (epochs 3 and 4: 66 to 95), not the jump before
    assert 60 < zoom[0].get_ylim()[0] < 66 and 95 < zoom[0].get_ylim()[1] < 101
    assert "y fitted to epoch 3 on" in zoom[0].get_title()
    markers = {line.get_label(): line.get_marker() for line in top[0].get_lines()}
    assert len({line.get_marker() for line in top[0].get_lines()
                if line.get_linestyle() == "-"}) == len(variants), markers
    assert "below the axis: finetune 20.0" in zoom[1].get_xlabel()
    assert zoom[1].get_ylim()[0] > 20
    assert "± 1 std" in figure.get_suptitle()
    plt.close("all")


def test_the_zoom_title_names_the_first_whole_epoch_its_y_axis_is_fitted_to(monkeypatch,
                                                                             tmp_path):
    # 182 epochs put the fit's start at 136.5; the first epoch it reads is 137
    long = [dict(_curve(v, s, 0.9), epochs=[float(e) for e in range(1, 7)],
                 test_accuracy_mean=[0.5, 0.6, 0.7, 0.8, 0.85, 0.9], test_accuracy_std=[0.0] * 6)
            for v, s in (("dense", 0.0), ("lt", 0.5))]
    figures = _captured(monkeypatch)
    curves.plot_curves(long, ["dense", "lt"], "tiny", tmp_path / "c.png")
    [figure] = figures
    assert "epochs 3 to 6,\ny fitted to epoch 5 on" in figure.axes[1].get_title()


def test_layer_density_axis_turns_logarithmic_for_sparse_layers(monkeypatch, tmp_path):
    import matplotlib.pyplot as plt
    figures = _captured(monkeypatch)
    report._plot_layers({"50.00 %": {"conv1/kernel": 0.6, "conv2/kernel": 0.4}}, "t",
                        tmp_path / "a.png")
    report._plot_layers({"99.00 %": {"conv1/kernel": 0.3, "conv2/kernel": 0.004}}, "t",
                        tmp_path / "b.png")
    dense, sparse = (figure.axes[0] for figure in figures)
    assert dense.get_yscale() == "linear" and dense.get_ylim() == (0, 1.05)
    assert sparse.get_yscale() == "log" and sparse.get_ylim()[0] < 0.004
    assert "log scale" in sparse.get_ylabel()
    plt.close("all")


def test_a_report_of_the_dense_run_alone_has_a_sparsity_axis_around_it(monkeypatch, tmp_path):
    """Before any ticket has finished: the x-axis spans density 1 (not 11 to 0.9, as a lone
    horizontal line leaves it), and its default ticks read as sparsities, not densities."""
    import matplotlib.pyplot as plt
    figures = _captured(monkeypatch)
    report._plot_accuracy(_entries(())[:1], {}, True, "dense only", tmp_path / "a.png", "final")
    [figure] = figures
    axes = figure.axes[0]
    assert axes.get_xlim() == pytest.approx((1.25, 0.8))
    figure.canvas.draw()
    labels = [t.get_text() for t in axes.get_xticklabels()
              if t.get_text() and 0.8 <= t.get_position()[0] <= 1.25]  # those in view
    assert labels == ["0"], labels  # density 1, labelled as sparsity 0 %
    assert "shifted" not in axes.get_xlabel()
    plt.close("all")


def test_the_schedule_note_says_when_published_tickets_were_pruned_otherwise():
    def member(schedule):
        return {"config": {"prune": {"schedule": schedule}}}
    assert report.schedule_note([member("iterative")]) == ""
    assert report.schedule_note([member("oneshot")]) == \
        "published tickets pruned iteratively, these runs one-shot"
