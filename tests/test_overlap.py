"""Ticket overlap (analysis.overlap): Jaccard of masks, its chance levels and the heat map."""

import numpy as np
import pytest

from lottery_kd.analysis import overlap, report
from tests.analysis_helpers import _captured


def test_mask_overlap_by_hand():
    a = {"conv": {"kernel": np.array([True, True, False, False]).reshape(1, 1, 1, 4)},
         "bn": {"scale": np.ones(2, bool)}}
    b = {"conv": {"kernel": np.array([True, False, True, False]).reshape(1, 1, 1, 4)},
         "bn": {"scale": np.ones(2, bool)}}
    result = overlap.mask_overlap(a, b)
    assert result["global"] == pytest.approx(1 / 3)  # {0} of {0, 1, 2}
    assert result["layers"] == {"conv/kernel": pytest.approx(1 / 3)}
    assert overlap.mask_overlap(a, a)["global"] == 1.0


def test_overlap_of_a_studys_tickets(studies):
    (first, _), _ = studies
    tickets = overlap.tickets_of(first)
    assert list(tickets) == ["kd@L1", "lt@L1", "weight_rewind@L1", "kd@L2", "lt@L2",
                             "weight_rewind@L2"]
    matrix = overlap.overlap_matrix(tickets)
    names = matrix["names"]
    level1 = [names.index(n) for n in ("kd@L1", "lt@L1", "weight_rewind@L1")]
    for i in level1:  # every chain prunes the same dense network at level 1
        for j in level1:
            assert matrix["global"][i][j] == 1.0
    assert matrix["global"][names.index("kd@L2")][names.index("lt@L2")] < 1.0


def test_merge_identical_tickets_and_chance_overlap():
    def ticket(bits):
        return {"conv": {"kernel": np.array(bits, bool).reshape(1, 1, 1, len(bits))}}

    tickets = {"s0 lt@L1": ticket([1, 1, 0, 0]), "s0 kd@L1": ticket([1, 1, 0, 0]),
               "s0 lt@L2": ticket([1, 0, 0, 0]), "s0 kd@L2": ticket([0, 1, 0, 0]),
               "s1 lt@L2": ticket([1, 0, 0, 0])}
    merged, members = overlap.merge_identical(tickets)
    assert members == {"s0 L1 (all 2)": ["s0 lt@L1", "s0 kd@L1"],
                       "s0 lt@L2 +1": ["s0 lt@L2", "s1 lt@L2"], "s0 kd@L2": ["s0 kd@L2"]}
    assert overlap.density(merged["s0 L1 (all 2)"]) == 0.5
    assert overlap.random_jaccard(0.5, 0.5) == pytest.approx(1 / 3)  # d / (2 - d)
    assert overlap.random_jaccard(0.5, 0.25) == pytest.approx(0.125 / 0.625)
    matrix = overlap.overlap_matrix(merged)
    assert matrix["densities"] == [0.5, 0.25, 0.25]
    assert matrix["random"][1][2] == pytest.approx(1 / 7)
    assert matrix["global"][1][2] == 0.0  # disjoint single weights


def test_report_overlap_spans_seeds_and_merges_identical_masks(studies):
    seeds, _ = studies
    runs = [report.load_run(d) for d in seeds]
    matrix = report.ticket_overlap(runs)
    names = matrix["names"]
    # level 1 prunes each seed's dense network once, so all three variants share one mask
    assert matrix["members"]["s0 L1 (all 3)"] == ["s0 kd@L1", "s0 lt@L1", "s0 weight_rewind@L1"]
    assert "s1 L1 (all 3)" in names and all(n.startswith(("s0 ", "s1 ")) for n in names)
    across = matrix["global"][names.index("s0 L1 (all 3)")][names.index("s1 L1 (all 3)")]
    assert 0.0 < across < 1.0  # different seeds, different tickets
    i, j = names.index("s0 L1 (all 3)"), names.index("s1 L1 (all 3)")
    d = matrix["densities"][i]
    assert matrix["random_uniform"][i][i] == pytest.approx(d / (2 - d))
    # the chance level: random masks with the two tickets' per-layer densities
    rows = [{r["variant"]: r for r in run["rows"] if r["level"] == 1} for run in runs]
    assert matrix["random"][i][j] == pytest.approx(overlap.matched_random_jaccard(
        rows[0]["lt"]["layer_counts"], rows[1]["lt"]["layer_counts"]))
    text = report.overlap_text(matrix, runs)
    assert "s0 L1 (all 3) = s0 kd@L1, s0 lt@L1, s0 weight_rewind@L1" in text
    assert "same per-layer densities as the two tickets" in text
    level1 = f"{matrix['random'][i][j]:.3f} at {100 * (1 - d):.2f} % sparsity (uniform "
    assert level1 in text


def _sample_jaccard(counts_a, counts_b, samples, rng):
    """Mean Jaccard of random masks drawn with exactly these per-layer kept counts."""
    values = []
    for _ in range(samples):
        a, b = [], []
        for layer, (kept, total) in counts_a.items():
            a.append(rng.permutation(total) < kept)
            b.append(rng.permutation(total) < counts_b[layer][0])
        values.append(overlap.jaccard(np.concatenate(a), np.concatenate(b)))
    return float(np.mean(values))


def test_matched_density_chance_differs_from_uniform_and_fills_the_matrix():
    # a small dense-ish layer and a big sparse one, as magnitude pruning leaves them
    def ticket(kept_small, kept_big):
        small, big = np.zeros(100, bool), np.zeros(900, bool)
        small[:kept_small], big[-kept_big:] = True, True
        return {"small": {"kernel": small.reshape(1, 1, 10, 10)},
                "big": {"kernel": big.reshape(1, 1, 30, 30)}}

    counts_a = {"small/kernel": (80, 100), "big/kernel": (20, 900)}
    counts_b = {"small/kernel": (60, 100), "big/kernel": (40, 900)}
    by_hand = (80 * 60 / 100 + 20 * 40 / 900) / (80 + 60 - 48 + 20 + 40 - 20 * 40 / 900)
    matched = overlap.matched_random_jaccard(counts_a, counts_b)
    assert matched == pytest.approx(by_hand)
    uniform = overlap.random_jaccard(0.1, 0.1)  # both keep 100 of 1000
    assert matched > 5 * uniform  # 0.33 against 0.053
    single = {"conv/kernel": (100, 1000)}  # one layer: the uniform case
    assert overlap.matched_random_jaccard(single, single) == pytest.approx(uniform)
    with pytest.raises(ValueError, match="different architectures"):
        overlap.matched_random_jaccard(counts_a, {"small/kernel": (1, 100)})
    matrix = overlap.overlap_matrix({"a": ticket(80, 20), "b": ticket(60, 40)})
    assert matrix["random"][0][1] == pytest.approx(matched)
    assert matrix["random_uniform"][0][1] == pytest.approx(uniform)


def test_matched_density_chance_is_the_mean_jaccard_of_random_masks():
    counts_a = {"stem": (200, 400), "block": (300, 3000), "head": (30, 600)}
    counts_b = {"stem": (150, 400), "block": (450, 3000), "head": (60, 600)}
    rng = np.random.default_rng(0)
    empirical = _sample_jaccard(counts_a, counts_b, 400, rng)
    expected = overlap.matched_random_jaccard(counts_a, counts_b)
    assert empirical == pytest.approx(expected, rel=0.01)
    uniform = overlap.random_jaccard(530 / 4000, 660 / 4000)
    assert empirical - uniform > 0.03  # 0.116 against 0.079: uniform is no chance level


def test_overlap_heat_map_gives_each_pairs_chance_level(monkeypatch, tmp_path):
    import matplotlib.pyplot as plt
    matrix = {"names": ["a", "b"], "global": [[1.0, 0.3], [0.3, 1.0]],
              "random": [[0.5, 0.05], [0.05, 0.5]], "densities": [0.168, 0.0687]}
    figures = _captured(monkeypatch)
    overlap.plot_heatmap(matrix, "overlap", tmp_path / "o.png")
    [figure] = figures
    # each ticket named with its sparsity, in the plot and in the table
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["a, 83.2 %",
                                                                         "b, 93.1 %"]
    assert "| a, 83.2 % | 1.000 | 0.300 |" in overlap.markdown(matrix)
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert texts == ["1.00", "0.30\n(0.05)", "0.30\n(0.05)", "1.00"]
    assert "chance" in figure.axes[0].get_title()
    plt.close("all")


def test_report_overlap_is_over_the_studys_pruning_scope(studies):
    """A study pruned in another scope (Renda's conv_no_shortcut, conv_fc) is compared over
    that scope: a kernel outside it would count as kept and raise every overlap."""
    import copy

    seeds, _ = studies
    runs = [copy.deepcopy(report.load_run(d)) for d in seeds]
    for run in runs:
        run["config"]["prune"]["scope"] = "conv_fc"
    matrix = report.ticket_overlap(runs)
    masks = overlap.tickets_of(seeds[0])["lt@L1"]
    i = matrix["names"].index("s0 L1 (all 3)")
    assert matrix["scope"] == "conv_fc"
    assert matrix["densities"][i] == pytest.approx(overlap.density(masks, "conv_fc"))
    assert overlap.density(masks, "conv_fc") != pytest.approx(overlap.density(masks, "conv"))
    assert "in the pruning scope `conv_fc`" in report.overlap_text(matrix, runs)
