"""Reports, ticket overlap, linear mode connectivity and the Deep Bootstrap on digits studies."""

import json
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from lottery_kd import published as published_lib
from lottery_kd.analysis import bootstrap, curves, lmc, overlap, report
from lottery_kd.study import lottery, results
from lottery_kd.training.tensorboard import ScalarWriter
from lottery_kd.training.trainer import Trainer
from tests.conftest import REPO, make_tiny_config


def _study(root, seed, variants="lt,weight_rewind,kd"):
    config = make_tiny_config()
    config.seed = seed
    config.lottery.variants = variants
    config.log.tensorboard = True  # the report's learning curves read these events
    workdir = root / f"seed{seed}"
    lottery.run(config, workdir, log=lambda *_: None)
    return workdir


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Two seeds of a quickstart-shaped study (2 levels), plus one with another protocol."""
    root = tmp_path_factory.mktemp("analysis")
    other = make_tiny_config()
    other.train.epochs = 1
    other.prune.levels = 1
    other.lottery.variants = "lt"
    lottery.run(other, root / "other", log=lambda *_: None)
    return [_study(root, 0), _study(root, 1)], root / "other"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_report_tables_equal_the_results_rows_and_plots_are_pngs(studies, tmp_path):
    (first, second), other = studies
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "lottery_kd.report", str(first), str(second),
                           str(other), "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "report.json").read_text())
    assert len(summary["groups"]) == 2  # the 1-epoch study is another protocol: not merged
    group = next(g for g in summary["groups"] if len(g["entries"]) > 2)
    rows = [results.read_rows(d / "results.jsonl") for d in (first, second)]
    for entry in group["entries"]:
        values = [r["test_accuracy"] for rs in rows for r in rs
                  if r["variant"] == entry["variant"] and
                  round(r["sparsity"], 4) == entry["sparsity"]]
        assert entry["n"] == 2 and len(values) == 2
        assert entry["final_mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert entry["final_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        at_best = [r["test_accuracy_at_best_val"] for rs in rows for r in rs
                   if r["variant"] == entry["variant"] and
                   round(r["sparsity"], 4) == entry["sparsity"]]
        assert entry["best_val_mean"] == pytest.approx(np.mean(at_best), abs=1e-12)
        assert entry["best_val_std"] == pytest.approx(np.std(at_best, ddof=1), abs=1e-12)
    text = (out / "report.md").read_text()
    kd_level2 = [r["test_accuracy"] for rs in rows for r in rs
                 if r["variant"] == "kd" and r["level"] == 2]
    cell = f"{100 * np.mean(kd_level2):.2f} ± {100 * np.std(kd_level2, ddof=1):.2f} (n=2)"
    assert cell in text
    kd_level2_best = [r["test_accuracy_at_best_val"] for rs in rows for r in rs
                      if r["variant"] == "kd" and r["level"] == 2]
    best_cell = (f"{100 * np.mean(kd_level2_best):.2f} ± "
                 f"{100 * np.std(kd_level2_best, ddof=1):.2f} (n=2)")
    best_table = text[text.index("at the epoch of best validation"):
                      text.index("at the end of training")]
    assert best_cell in best_table
    assert "| sparsity % | lt | weight_rewind | kd |" in text  # the config's order
    pngs = sorted(out.glob("*.png"))
    assert {p.name.split("_")[0] for p in pngs} >= {"accuracy", "layer", "overlap", "curves"}
    for png in pngs:
        width, height = _png_size(png)
        assert width >= 400 and height >= 300, png.name
    assert "kd@L2" in text and "weight_rewind@L1" in text  # the overlap table


def test_learning_curves_end_at_the_results_rows(studies, tmp_path):
    seeds, _ = studies
    runs = [report.load_run(d) for d in seeds]
    learning = curves.finished_curves(runs)
    rows = [r for run in runs for r in run["rows"]]
    assert {(c["sparsity"], c["variant"]) for c in learning} == \
        {(round(r["sparsity"], 4), r["variant"]) for r in rows}
    for curve in learning:
        finals = [r["test_accuracy"] for r in rows if r["variant"] == curve["variant"]
                  and round(r["sparsity"], 4) == curve["sparsity"]]
        assert curve["n"] == len(finals) == 2
        assert curve["epochs"][-1] == 2.0  # the tiny study trains 2 epochs
        assert curve["test_accuracy_mean"][-1] == pytest.approx(np.mean(finals), abs=1e-6)
        assert curve["test_accuracy_std"][-1] == pytest.approx(np.std(finals, ddof=1), abs=1e-6)
    curves.plot_curves(learning, ["lt", "weight_rewind", "kd"], "tiny", tmp_path / "c.png")
    assert _png_size(tmp_path / "c.png")[0] >= 400


def test_a_seeds_runs_count_once_when_two_workdirs_hold_them(studies):
    """Two workdirs of one seed (e.g. with different variant lists) both hold its dense run:
    the curves, the tables and the compute time count it once."""
    seeds, _ = studies
    run = report.load_run(seeds[0])
    twice = [run, dict(run)]
    assert all(c["n"] == 1 for c in curves.finished_curves(twice))
    assert all(e["n"] == 1 for e in report.aggregate(twice))
    seconds = sum(r["seconds"] for r in run["rows"])
    assert f"Compute: {len(run['rows'])} training run(s), {seconds / 3600:.2f} h" in \
        report.provenance(twice)


def test_protocol_groups_ignore_where_the_data_is_read_but_not_per_device_batch_norm():
    from experiments.configs import default
    config = default.get_config().to_dict()

    def run_with(**changes):
        changed = json.loads(json.dumps(config))
        for dotted, value in changes.items():
            section, key = dotted.split(".")
            changed[section][key] = value
        return {"config": changed}

    base = report.group_key(run_with())
    assert report.group_key(run_with(**{"data.dir": "/elsewhere/cifar10",
                                        "data.source": "local"})) == base
    assert report.group_key(run_with(**{"parallel.num_processes": 4})) == base
    assert report.group_key(run_with(**{"parallel.batch_norm": "per_device"})) != base
    assert report.group_key(run_with(**{"train.epochs": 30})) != base


def test_dynamic_runs_with_and_without_kd_share_a_table_and_are_paired():
    from experiments.configs import default
    config = default.get_config().to_dict()
    config["dynamic"].update(method="rigl", sparsity=0.9)
    distilled = json.loads(json.dumps(config))
    distilled["dynamic"]["distill"] = True
    assert report.group_key({"config": config}) == report.group_key({"config": distilled})
    assert report.undistilled_twin("rigl_kd") == "rigl"
    assert report.undistilled_twin("set_kd_sparse_init") == "set_sparse_init"
    assert report.undistilled_twin("rigl") is None and report.undistilled_twin("lt") is None
    assert report.undistilled_twin("kd_rewind") == "weight_rewind"
    runs = [{"config": {**config, "seed": seed}, "rows": [
        {"variant": "dense", "sparsity": 0.0, "test_accuracy": 0.9},
        {"variant": "rigl", "sparsity": 0.9, "test_accuracy": 0.80 + seed / 100},
        {"variant": "rigl_kd", "sparsity": 0.9, "test_accuracy": 0.83 + seed / 50}]}
        for seed in (0, 1)]
    [difference] = report.paired_differences(runs, "final")
    assert (difference["variant"], difference["baseline"], difference["n"]) == \
        ("rigl_kd", "rigl", 2)
    assert difference["mean"] == pytest.approx(0.035)


def test_read_scalars_later_files_win_and_a_torn_record_ends_a_file(tmp_path):
    first = ScalarWriter(tmp_path)
    first.scalars(1, {"epoch": 1.0, "test_accuracy": 0.5})
    first.scalars(2, {"epoch": 2.0, "test_accuracy": 0.6})  # redone after the resume below
    first.close()
    second = ScalarWriter(tmp_path)  # a resumed run: a new events file
    second.scalars(2, {"epoch": 2.0, "test_accuracy": 0.75})
    second.scalars(3, {"epoch": 3.0, "test_accuracy": 0.875})
    second.close()
    newest = sorted(tmp_path.iterdir(), key=curves._written_at)[-1]
    newest.write_bytes(newest.read_bytes()[:-7])  # a crash in the middle of the last record
    assert curves.read_scalars(tmp_path) == [
        {"step": 1, "epoch": 1.0, "test_accuracy": 0.5},
        {"step": 2, "epoch": 2.0, "test_accuracy": 0.75}]


def test_paired_differences_are_per_seed_differences_of_the_rows(studies, tmp_path):
    seeds, _ = studies
    runs = [report.load_run(d) for d in seeds]
    differences = report.paired_differences(runs, "final")
    assert {(d["variant"], d["baseline"]) for d in differences} == {("kd", "lt"),
                                                                    ("kd", "weight_rewind")}
    rows = {seed: {(r["variant"], round(r["sparsity"], 4)): r["test_accuracy"]
                   for r in results.read_rows(d / "results.jsonl")} for seed, d in enumerate(seeds)}
    for d in differences:
        by_hand = [rows[s][(d["variant"], d["sparsity"])] - rows[s][(d["baseline"], d["sparsity"])]
                   for s in (0, 1)]
        assert d["n"] == 2
        assert d["mean"] == pytest.approx(np.mean(by_hand))
        assert d["std"] == pytest.approx(np.std(by_hand, ddof=1))
    table = report.differences_table(differences)
    first = differences[0]
    assert f"{100 * first['mean']:+.2f} ± {100 * first['std']:.2f} (n=2)" in table
    assert report.undistilled_twin("kd_rewind") == "weight_rewind"
    assert report.undistilled_twin("lt") is None


def test_each_start_records_its_environment_and_the_report_states_it(studies, tmp_path):
    from lottery_kd.runtime.environment import read_starts
    seeds, _ = studies
    starts = read_starts(seeds[0])
    assert len(starts) == 1
    assert {"host", "processor", "backend", "device", "versions", "code_version",
            "conv_impl", "native_conv_available"} <= set(starts[0])
    assert starts[0]["versions"]["jax"] == jax.__version__
    with (seeds[0] / "environment.jsonl").open("a") as handle:
        handle.write('{"torn": ')  # a kill mid-write leaves a torn last line: skipped
    assert len(read_starts(seeds[0])) == 1
    runs = [report.load_run(d) for d in seeds]
    text = report.provenance(runs)
    hours = sum(r["seconds"] for run in runs for r in run["rows"]) / 3600
    assert f"{len(runs[0]['rows']) + len(runs[1]['rows'])} training run(s), {hours:.2f} h" in text
    assert starts[0]["processor"] in text and "(2 start(s))" in text


def test_variants_keep_the_configs_order_while_a_level_is_partly_done():
    rows = [{"level": level, "variant": variant, "sparsity": sparsity, "test_accuracy": 0.8,
             "test_accuracy_at_best_val": 0.8}
            for level, sparsity, variants in ((1, 0.59, ("lt", "reinit", "kd")), (2, 0.83, ("lt",)))
            for variant in variants]
    entries = report.aggregate([{"config": {"seed": 0}, "rows": rows, "dir": "study"}])
    assert [(e["variant"], e["sparsity"]) for e in entries] == [
        ("lt", 0.59), ("reinit", 0.59), ("kd", 0.59), ("lt", 0.83)]


def test_report_names_a_directory_that_holds_no_study(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lottery_kd.report", str(tmp_path), "--out",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "config.json is missing" in done.stderr and "Traceback" not in done.stderr


def test_runs_that_differ_in_seed_variants_or_oneshot_first_level_share_a_protocol():
    config = lottery.config_to_dict(make_tiny_config())
    config["prune"]["schedule"] = "oneshot"
    other = json.loads(json.dumps(config))
    other["seed"], other["lottery"]["variants"], other["prune"]["first_level"] = 1, "lt", 2
    assert report.group_key({"config": config}) == report.group_key({"config": other})
    other["train"]["epochs"] += 1
    assert report.group_key({"config": config}) != report.group_key({"config": other})


def test_published_numbers_are_drawn_only_where_model_and_data_match():
    reference = published_lib.load(report.REFERENCE)  # carried in the package, always there
    published = report.published_for("resnet20", "cifar10", reference)
    assert published["dense"] == 91.71
    assert (0.8, 91.86) in published["lines"]["lt"]
    assert report.published_for("resnet20", "cifar100", reference) == {}
    assert report.published_for("digits_convnet", "digits", reference) == {}


def test_the_package_reads_nothing_outside_itself_at_run_time():
    """The published tables travel with the package; no module (code or docstring) reads or
    points to ../shared, which a user's clone does not have."""
    from tests.conftest import REPO
    offenders = [str(path.relative_to(REPO)) for path in (REPO / "lottery_kd").rglob("*.py")
                 if "../shared" in path.read_text() or '"shared"' in path.read_text()]
    assert offenders == []
    assert published_lib.load("rigl2020_cifar10_wrn22_2")["wrn22_2_erk"][1]["rigl"] == 93.6


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


def _captured(monkeypatch):
    """The figures the plotting functions close, kept open for inspection (plt.close("all")
    still closes everything)."""
    import matplotlib.pyplot as plt
    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda figure=None: close(figure)
                        if isinstance(figure, str) else figures.append(figure))
    return figures


def _beside(inner, outer):
    """Whether window extent `outer` lies wholly right of `inner` or wholly below it."""
    return outer.x0 >= inner.x1 or outer.y1 <= inner.y0


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
    assert to_hex(lines["published rewind_to_0"].get_color()) == \
        to_hex(bars["lt"].get_color())
    assert to_hex(lines["published best_weight_rewinding"].get_color()) == \
        to_hex(bars["weight_rewind"].get_color())
    colors = [to_hex(line.get_color()) for line in bars.values()]
    assert len(set(colors)) == 3 and to_hex("gray") not in colors
    for density in (0.41, 0.1678):  # shifted sideways a little, in the variants' order
        xs = [x for line in bars.values() for x in line.get_xdata()
              if abs(x / density - 1) < 0.1]
        assert len(xs) == 3 and xs == sorted(xs) and len(set(xs)) == 3
    for line in bars.values():
        assert list(line.get_xdata()) == sorted(line.get_xdata())  # never doubles back
    legend = axes.get_legend()
    assert "other protocol" in legend.get_title().get_text()
    assert all("protocol" not in t.get_text() for t in legend.get_texts())  # said once
    assert "n=2" in axes.get_title() and "± 1 std" in axes.get_title()
    assert "best-validation epoch" in axes.get_ylabel()
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
    assert "below the axis: finetune 20.0" in zoom[1].get_xlabel()
    assert zoom[1].get_ylim()[0] > 20
    assert "± 1 std" in figure.get_suptitle()
    plt.close("all")


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


def test_overlap_heat_map_gives_each_pairs_chance_level(monkeypatch, tmp_path):
    import matplotlib.pyplot as plt
    matrix = {"names": ["a", "b"], "global": [[1.0, 0.3], [0.3, 1.0]],
              "random": [[0.5, 0.05], [0.05, 0.5]]}
    figures = _captured(monkeypatch)
    overlap.plot_heatmap(matrix, "overlap", tmp_path / "o.png")
    [figure] = figures
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert texts == ["1.00", "0.30\n(0.05)", "0.30\n(0.05)", "1.00"]
    assert "chance" in figure.axes[0].get_title()
    plt.close("all")


# --------------------------------------------------------------------------------------------
# linear mode connectivity


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
        assert len(result["test_error"]) == 5 and result["alphas"] == [0, 0.25, 0.5, 0.75, 1]
        assert result["barrier"] == pytest.approx(lmc.error_barrier(result["test_error"]))
        assert result["endpoint_errors"][0] != result["endpoint_errors"][1] or \
            result["test_error"][2] != result["test_error"][0]  # the copies really differ
    assert _png_size(out / "lmc.png")[0] >= 400
    assert "| 19 | 1 |" in (out / "lmc.md").read_text()
    # A ticket with KD, its two copies on the data orders seed+1 and seed+2 ...
    data_seeds, original = [], lmc.LinearModeConnectivity._trainer

    def record(self, data_seed):
        data_seeds.append(data_seed)
        return original(self, data_seed)

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
    retrained = plain._fit(plain.run.trainer, init, init["masks"], 0, k, "check", tmp_path,
                           distill=False)
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

    def crash_on_the_second_copy(self, trainer, start, masks, start_step, num_steps, tag, out,
                                 **kwargs):
        fits.append(tag)
        if tag.endswith("copy2") and len(fits) == 2:
            raise KeyboardInterrupt  # a kill after copy 1 was trained and checkpointed
        return original(self, trainer, start, masks, start_step, num_steps, tag, out, **kwargs)

    monkeypatch.setattr(lmc.LinearModeConnectivity, "_fit", crash_on_the_second_copy)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        lmc.run_sweep(first, ["1ep"], out, points=5, log=lambda *_: None)
    assert (out / "checkpoints" / "k19_copy1").is_dir()
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


# --------------------------------------------------------------------------------------------
# Deep Bootstrap


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
