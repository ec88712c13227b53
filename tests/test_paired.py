"""`python -m lottery_kd.paired` (analysis.paired): paired tests between a study's tickets on the
same test images. The statistics against hand-computed values; the command on the session's tiny
study (tests.conftest.studies), whose tickets' recomputed accuracies must be its rows'."""

import json
import math

import numpy as np
import pytest

from lottery_kd.analysis import paired, paired_stats
from lottery_kd.study import results
from tests.analysis_helpers import _png_size


def test_mcnemar_p_is_the_exact_two_sided_binomial_tail():
    # 10 of 40 discordant images: 2 * P(X <= 10), X ~ Binomial(40, 1/2)
    tail = sum(math.comb(40, k) for k in range(11)) / 2 ** 40
    assert paired_stats.mcnemar_p(30, 10) == pytest.approx(2 * tail)
    # scipy's binomtest(10, 40).pvalue
    assert paired_stats.mcnemar_p(30, 10) == pytest.approx(0.0022214337732293643)
    assert paired_stats.mcnemar_p(10, 30) == paired_stats.mcnemar_p(30, 10)
    assert paired_stats.mcnemar_p(5, 5) == 1.0 and paired_stats.mcnemar_p(0, 0) == 1.0
    assert paired_stats.mcnemar_p(336, 315) == pytest.approx(0.433144038748479)
    # ImageNet-sized counts: exact, and quick (scipy.stats.binomtest(12000, 25000).pvalue)
    assert paired_stats.mcnemar_p(12000, 13000) == pytest.approx(2.6317455083363157e-10, rel=1e-9)


def test_paired_test_counts_the_images_only_one_ticket_gets_right():
    a = np.zeros(1000, bool)
    b = np.zeros(1000, bool)
    a[:900] = b[:900] = True  # both right on 900
    a[900:930] = True  # 30 only a
    b[930:940] = True  # 10 only b
    found = paired_stats.paired_test(a, b)
    assert (found["n"], found["a_only"], found["b_only"]) == (1000, 30, 10)
    assert found["difference"] == pytest.approx(0.02)
    half = 1.959963984540054 * math.sqrt(40 - 20 ** 2 / 1000) / 1000
    assert found["ci95_normal"] == pytest.approx([0.02 - half, 0.02 + half])
    # the exact interval: Clopper-Pearson of 30 of 40 discordant images (scipy's binomtest(30,
    # 40).proportion_ci(method="exact"): 0.5880380198484636, 0.8730852010671533), as a difference
    low, high = 0.5880380198484636, 0.8730852010671533
    assert found["ci95_given_discordant"] == pytest.approx(
        [(2 * low - 1) * 0.04, (2 * high - 1) * 0.04], abs=1e-11)
    assert found["ci95"] == pytest.approx(paired_stats.tango_interval(30, 10, 1000))
    assert paired_stats.paired_test(b, a)["difference"] == pytest.approx(-0.02)
    with pytest.raises(ValueError, match="equal-length"):
        paired_stats.paired_test(a, b[:10])


def test_clopper_pearson_matches_scipy_and_handles_the_ends():
    # scipy.stats.binomtest(k, n).proportion_ci(method="exact")
    for (k, n), expected in {(496, 932): (0.49955970476893996, 0.5646139686706548),
                             (12000, 25000): (0.47378963712022004, 0.48621501331712813),
                             (0, 5): (0.0, 0.5218237501049814),
                             (5, 5): (0.47817624989501856, 1.0)}.items():
        assert paired_stats.clopper_pearson(k, n) == pytest.approx(expected, abs=1e-10)
    for bad in ((3, 2), (-1, 4), (0, 0)):
        with pytest.raises(ValueError, match="clopper_pearson"):
            paired_stats.clopper_pearson(*bad)


def test_the_exact_interval_excludes_zero_exactly_when_mcnemar_p_is_below_005():
    # the normal interval does not: 496 against 436 of 10,000 (the study's kd - lt) has
    # p = 0.053 and a normal interval just above zero; the exact one reaches below it
    n = 10_000
    for a_only in range(0, 41, 2):
        for b_only in range(0, 41, 3):
            if a_only + b_only == 0:
                continue
            a, b = np.zeros(n, bool), np.zeros(n, bool)
            a[:a_only], b[a_only:a_only + b_only] = True, True
            found = paired_stats.paired_test(a, b)
            low, high = found["ci95_given_discordant"]
            assert low <= found["difference"] <= high
            assert (low > 0 or high < 0) == (found["p_value"] < 0.05), (a_only, b_only)
    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[:496], b[496:932] = True, True
    found = paired_stats.paired_test(a, b)
    assert found["p_value"] == pytest.approx(0.053226051972698155)
    assert found["ci95_normal"][0] > 0 > found["ci95_given_discordant"][0]
    assert found["ci95"][0] > 0  # Tango's inverts the large-sample test: z = 60 / 932^0.5 > 1.96
    same = paired_stats.paired_test(a, a)
    assert same["ci95_given_discordant"] == [0.0, 0.0]  # no discordant image
    bound = paired_stats.Z95 ** 2 / (n + paired_stats.Z95 ** 2)  # Tango's, with none: +-z²/(n+z²)
    assert same["ci95"] == pytest.approx([-bound, bound], abs=1e-11)


def _restricted_b_share(a_only: int, b_only: int, n: int, difference: float) -> float:
    """The maximum-likelihood share of images only b gets right, given the difference, by brute
    force over a fine grid (the closed form in tango_score is what this checks)."""
    share = np.linspace(max(0.0, -difference), (1 - difference) / 2, 400_001)[1:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_likelihood = (a_only * np.log(share + difference) + b_only * np.log(share)
                          + (n - a_only - b_only) * np.log(1 - 2 * share - difference))
    return float(share[np.nanargmax(log_likelihood)])


def test_tangos_interval_ends_where_the_score_with_the_restricted_mle_is_196():
    for a_only, b_only, n in [(594, 382, 10_000), (1, 7, 21), (6, 16, 161), (12, 0, 50)]:
        low, high = paired_stats.tango_interval(a_only, b_only, n)
        assert low < (a_only - b_only) / n < high
        for end, target in ((low, paired_stats.Z95), (high, -paired_stats.Z95)):
            if abs(end) == 1.0:
                continue
            share = _restricted_b_share(a_only, b_only, n, end)
            score = (a_only - b_only - n * end) / np.sqrt(n * (2 * share + end * (1 - end)))
            assert score == pytest.approx(target, abs=2e-3), (a_only, b_only, n, end)
            assert paired_stats.tango_score(a_only, b_only, n, end) == pytest.approx(target)
    assert paired_stats.tango_interval(5, 0, 5)[1] == 1.0  # every image discordant, a's way
    with pytest.raises(ValueError, match="tango_interval"):
        paired_stats.tango_interval(6, 5, 10)


def _coverage(n: int, p_a_only: float, p_b_only: float, interval) -> float:
    """The exact probability that interval(a_only, b_only, n) covers the true difference, over
    every outcome of n images drawn with these shares of a-only and b-only images."""
    true, covered = p_a_only - p_b_only, 0.0
    log_rest = math.log1p(-p_a_only - p_b_only)
    for a_only in range(n + 1):
        for b_only in range(n - a_only + 1):
            log_p = (math.lgamma(n + 1) - math.lgamma(a_only + 1) - math.lgamma(b_only + 1)
                     - math.lgamma(n - a_only - b_only + 1) + a_only * math.log(p_a_only)
                     + b_only * math.log(p_b_only) + (n - a_only - b_only) * log_rest)
            if log_p > -30:
                low, high = interval(a_only, b_only, n)
                covered += math.exp(log_p) * (low <= true <= high)
    return covered


def test_tangos_interval_covers_near_95_percent_where_the_conditional_one_does_not():
    """One ticket winning 8 of 9 discordant images (a ticket against a much stronger network):
    the interval exact given the discordant count covers the difference about 70 % of the
    time, Tango's near 95 %."""
    def given_discordant(a_only: int, b_only: int, n: int) -> tuple[float, float]:
        if not a_only + b_only:
            return 0.0, 0.0
        share = paired_stats.clopper_pearson(a_only, a_only + b_only)
        return tuple((2 * s - 1) * (a_only + b_only) / n for s in share)
    assert _coverage(80, 0.08, 0.01, given_discordant) < 0.8
    assert 0.93 < _coverage(80, 0.08, 0.01, paired_stats.tango_interval) < 0.97
    assert 0.93 < _coverage(80, 0.05, 0.04, paired_stats.tango_interval) < 0.97


def test_a_p_value_below_the_float_range_reads_as_a_bound_not_zero():
    assert paired_stats.mcnemar_p(0, 1100) == 0.0  # 2 / 2^1100, under 1e-308
    assert paired._p_text(0.0) == "< 1e-300"
    assert paired._p_text(3.2e-13) == "3.2e-13" and paired._p_text(0.433) == "0.433"


def test_holm_adjusts_step_down_and_keeps_the_order():
    # four tests, smallest first: 0.01 * 4, 0.03 * 3, 0.04 * 2 -> raised to 0.09, 0.2 * 1
    assert paired_stats.holm([0.04, 0.01, 0.2, 0.03]) == pytest.approx([0.09, 0.04, 0.2, 0.09])
    assert paired_stats.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert paired_stats.holm([]) == []
    # the study's L10 kd_rewind - lr_rewind, p = 0.039, seventh smallest of ten: 4 * 0.039
    study = [1.2e-11, 1.2e-08, 0.185, 0.053, 7.8e-07, 8.9e-05, 8.9e-15, 0.433, 0.039, 2.8e-09]
    assert paired_stats.holm(study)[8] == pytest.approx(0.156)


def test_pairs_parse_and_default_to_every_two_tickets_later_variant_first():
    assert paired.parse_pairs("kd:weight_rewind, kd:lt,kd:lt") == [("kd", "weight_rewind"),
                                                                   ("kd", "lt")]
    for bad in ("kd", "kd:", ":lt", "kd:kd"):
        with pytest.raises(ValueError, match="--pairs"):
            paired.parse_pairs(bad)
    order = ["lt", "weight_rewind", "kd"]
    chosen = paired.choose_pairs({1: ["kd", "lt", "weight_rewind"], 2: ["lt"]}, order, [], [])
    assert [(p.level, p.a, p.b) for p in chosen] == [
        (1, "weight_rewind", "lt"), (1, "kd", "lt"), (1, "kd", "weight_rewind")]
    with pytest.raises(ValueError, match="--levels 3: the study has no finished"):
        paired.choose_pairs({1: ["lt", "kd"]}, order, [], [3])
    with pytest.raises(ValueError, match="--levels 2: the study has 1 finished ticket.*: 1\\)"):
        paired.choose_pairs({1: ["lt", "kd"], 2: ["lt"]}, order, [], [2])
    with pytest.raises(ValueError, match="no finished weight_rewind"):
        paired.choose_pairs({1: ["lt", "kd"]}, order, [("kd", "weight_rewind")], [1])


def test_the_command_recomputes_each_tickets_accuracy_and_tests_its_pairs(studies, tmp_path):
    study = studies[0][0]
    out = tmp_path / "paired"
    assert paired.main([str(study), "--out", str(out), "--levels", "2"]) == 0
    record = json.loads((out / "paired.json").read_text())
    rows = {(r["level"], r["variant"]): r for r in results.read_rows(study / "results.jsonl")}
    tickets = {(t["level"], t["variant"]): t for t in record["tickets"]}
    assert set(tickets) == {(0, "dense"), (2, "lt"), (2, "weight_rewind"), (2, "kd")}
    for key, ticket in tickets.items():  # the study's own evaluation, image for image
        assert ticket["test_accuracy"] == pytest.approx(rows[key]["test_accuracy"], abs=1e-6)
    predictions = np.load(out / "predictions.npz")
    labels = predictions["labels"]
    assert len(labels) == record["test_images"]
    for pair in record["pairs"]:
        a, b = (tickets[(2, v)]["test_accuracy"] for v in (pair["a"], pair["b"]))
        assert pair["difference"] == pytest.approx(a - b, abs=1e-9)
        same = predictions[f"level_2_{pair['a']}"] == predictions[f"level_2_{pair['b']}"]
        assert pair["agreement"] == pytest.approx(same.mean())
    assert [(p["a"], p["b"]) for p in record["pairs"]] == [
        ("weight_rewind", "lt"), ("kd", "lt"), ("kd", "weight_rewind")]
    holm = paired_stats.holm([p["p_value"] for p in record["pairs"]])  # one level: one family of 3
    assert [(p["p_holm"], p["holm_family"]) for p in record["pairs"]] == [(h, 3) for h in holm]
    dense = predictions["level_0_dense"]
    assert tickets[(2, "kd")]["agrees_with_dense"] == pytest.approx(
        (predictions["level_2_kd"] == dense).mean())
    mistakes = dense != labels
    assert tickets[(2, "kd")]["repeats_dense_mistakes"] == [
        int(((predictions["level_2_kd"] == dense) & mistakes).sum()), int(mistakes.sum())]
    assert tickets[(0, "dense")]["repeats_dense_mistakes"] is None
    table = (out / "paired.md").read_text()
    assert "| 2 | kd − weight_rewind |" in table and "| Holm p |" in table
    assert _png_size(out / "paired.png")[1] > 100


def test_bad_input_is_refused_before_any_prediction(studies, tmp_path, capsys):
    study = studies[0][0]
    cases = [(["--pairs", "kd"], "--pairs 'kd'"),
             (["--pairs", "kd:reinit"], "no finished reinit ticket"),
             (["--levels", "9"], "--levels 9"),
             (["--levels", "x"], "--levels 'x'")]
    for extra, message in cases:
        assert paired.main([str(study), "--out", str(tmp_path / "out"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert paired.main([str(study), "--out", str(study / "inside")]) == 2
    assert "inside the study" in capsys.readouterr().err
    assert paired.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_ticket_whose_recomputed_accuracy_is_not_its_rows_is_named():
    tickets = [{"level": 1, "variant": "lt", "test_accuracy": 0.90004,  # half an image apart
                "results_row_accuracy": 0.9},
               {"level": 1, "variant": "kd", "test_accuracy": 0.8990,
                "results_row_accuracy": 0.9}]
    notes = paired._mismatches(tickets, 10_000)
    assert notes == ["L1 kd: 89.90 % here, 90.00 % in its results row; its snapshot or "
                     "evaluation path differs from the run's, so its pairs compare other "
                     "networks than the rows do"]
