"""The benchmarks run and write the records they promise (smoke tests; no timing is asserted)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_train_step_benchmark_writes_every_variant_and_the_ratios(tmp_path):
    out = tmp_path / "train_step.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--models", "resnet20",
                           "--steps", "1", "--repeats", "1", "--conv-impls", "xla,auto",
                           "--norm-impls", "fused", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    variants = [r["variant"] for r in report["records"]]
    assert variants == ["dense", "masked", "masked_kd", "masked_kd_cached", "masked_kd_fill",
                        "eval", "ratios"] * 2
    assert [r["conv_impl"] for r in report["records"]] == ["xla"] * 7 + ["auto"] * 7
    assert {r["norm_impl"] for r in report["records"]} == {"fused"}
    assert {r["malloc"] for r in report["records"]} == {"tuned"}
    for record in report["records"][:6]:
        assert {"model", "variant", "batch", "images_per_sec", "compile_s"} <= set(record)
        assert record["images_per_sec"] > 0
    assert report["records"][1]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    ratios = report["records"][6]
    assert ratios["masked_kd_cached_over_masked_kd"] > 0
    assert ratios["masked_kd_fill_over_masked_kd"] > 0
    assert "jax" in report["versions"] and report["backend"] == "cpu"


def test_pruning_benchmark_times_a_resnet50_sized_tree(tmp_path):
    out = tmp_path / "pruning.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.pruning", "--repeats", "1",
                           "--synflow-rounds", "2", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(out.read_text())["records"]
    first = records[0]
    assert first["method"] == "magnitude_global" and first["prunable_weights"] > 23_000_000
    assert first["removed"] == -(-first["prunable_weights"] * 2 // 10)  # ceil(0.2 x remaining)


def test_conv3x3_benchmark_compares_every_pass_of_every_layer_shape(tmp_path):
    out = tmp_path / "conv3x3.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.conv3x3", "--batch-size", "8",
                           "--steps", "1", "--repeats", "1", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(out.read_text())["records"]
    assert len(records) == 6 * 3 - 1  # the stem has no input gradient
    for record in records:
        assert record["xla_ms"] > 0 and record["native_ms"] > 0
        assert record["max_relative_difference"] < 1e-5


def test_input_pipeline_benchmark_measures_both_inputs_next_to_the_train_step(tmp_path):
    out = tmp_path / "input_pipeline.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.input_pipeline", "--steps", "1",
                           "--repeats", "1", "--imagenet-batches", "2",
                           "--imagenet-batch-size", "4", "--cifar-dir", str(tmp_path / "none"),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["benchmark"] == "input_pipeline" and report["backend"] == "cpu"
    assert "malloc_tunables" in report and "jax" in report["versions"]
    assert report["cifar_source"].startswith("synthetic")
    for key in ("cifar_input_images_per_second", "resnet20_train_step_images_per_second",
                "imagenet_input_images_per_second"):
        assert report[key] > 0


def test_sparse_benchmark_records_both_paths_for_each_density_and_pass(tmp_path):
    out = tmp_path / "sparse.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.sparse", "--models", "resnet20",
                           "--densities", "1,0.1074", "--batch", "16", "--steps", "1",
                           "--repeats", "1", "--structures", "unstructured,block:16",
                           "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [r for r in json.loads(out.read_text())["records"]
               if r["impl"] != "pytorch_eager"]
    cells = [(r["density"], r["structure"], r["pass"], r["impl"]) for r in records]
    assert cells == [(d, s, p, i) for d, s in ((1.0, "unstructured"), (0.1074, "unstructured"),
                                              (0.1074, "block:16"))
                     for p, impls in (("train", ("native", "sparse")),
                                      ("infer", ("native", "sparse", "export")))
                     for i in impls]
    assert all(r["images_per_sec"] > 0 and r["default"] == (r["impl"] == "native")
               for r in records)
    assert all(r["speedup_over_densest"] == 1.0 for r in records if r["density"] == 1.0)
    # global magnitude keeps more of the costly early layers: more multiply-adds than weights
    kept = {(r["density"], r["structure"]): r["flops_kept"] for r in records}
    assert kept[1.0, "unstructured"] == 1.0
    assert 0.15 < kept[0.1074, "unstructured"] < 0.3


def test_sparse_benchmark_cells_measure_each_structure_where_it_applies():
    from benchmarks.sparse import cells
    assert cells([1.0, 0.5, 0.1], ["unstructured", "2:4", "block:16"]) == [
        (1.0, "unstructured"), (0.5, "unstructured"), (0.5, "2:4"), (0.5, "block:16"),
        (0.1, "unstructured"), (0.1, "block:16")]


def test_step_profile_names_the_kernels_of_a_sparse_step(tmp_path):
    out = tmp_path / "profile.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.step_profile", "--batch-size", "8",
                           "--steps", "1", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())["records"][0]
    kinds = {op["kind"]: op for op in record["ops"]}
    # ResNet-20: 19 3x3 convolutions and 2 1x1 shortcuts, each one forward call; backward one
    # call each, but the stride-2 shortcuts' filter gradient alone (their input gradient: XLA)
    assert kinds["lottery_kd_sparse_conv_forward"]["calls_per_step"] == 21
    assert kinds["lottery_kd_sparse_conv_backward"]["calls_per_step"] == 19
    assert kinds["lottery_kd_sparse_conv_filter_grad"]["calls_per_step"] == 2
    assert "lottery_kd_batch_norm_forward" in kinds
    assert sum(op["share"] for op in record["ops"]) == pytest.approx(1.0, abs=1e-3)
    assert record["op_ms_per_step"] > 0 and record["density"] == 0.1074


def test_step_profile_of_inference_has_forward_convolutions_only(tmp_path):
    out = tmp_path / "profile.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.step_profile", "--batch-size", "8",
                           "--steps", "1", "--infer", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())["records"][0]
    kinds = {op["kind"]: op for op in record["ops"]}
    assert record["pass"] == "infer"
    assert kinds["lottery_kd_sparse_conv_forward"]["calls_per_step"] == 21
    # no gradients, and eval BatchNorm is an XLA fusion, not the training kernel
    assert not any("backward" in kind or "grad" in kind or "batch_norm" in kind
                   for kind in kinds)


def test_step_profile_measures_how_much_kernel_time_runs_beside_another_kernel():
    from benchmarks.step_profile import overlapped_share
    kinds = {"a": "lottery_kd_conv3x3_forward", "b": "lottery_kd_conv3x3_filter_grad"}
    events = [{"ph": "X", "name": "a", "ts": 0, "dur": 10},
              {"ph": "X", "name": "b", "ts": 5, "dur": 10},   # overlaps a's second half
              {"ph": "X", "name": "fusion.3", "ts": 0, "dur": 40},  # not a native kernel
              {"ph": "X", "name": "a", "ts": 20, "dur": 10}]  # alone
    assert overlapped_share(events, kinds) == pytest.approx(10 / 30, abs=1e-4)  # 5 + 5 of 30
    assert overlapped_share(events[2:], kinds) == 0.0


def test_step_profile_groups_trace_events_by_kernel_and_refuses_a_bad_density():
    from benchmarks.step_profile import aggregate, main, op_kinds
    hlo = ('  %ffi_call.3 = f32[8] custom-call(f32[8] %p), custom_call_target="conv_fwd"\n'
           '  ffi_call.7 = f32[8] custom-call(f32[8] %q), custom_call_target="bn_fwd"\n')
    kinds = op_kinds(hlo)
    assert kinds == {"ffi_call.3": "conv_fwd", "ffi_call.7": "bn_fwd"}
    events = [{"ph": "X", "name": "ffi_call.3", "dur": 3000.0},
              {"ph": "X", "name": "ffi_call.3", "dur": 1000.0},
              {"ph": "X", "name": "ffi_call.7", "dur": 2000.0},
              {"ph": "X", "name": "add_fusion.12", "dur": 2000.0},
              {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 9e9},  # a container, skipped
              {"ph": "X", "name": "$api.py:12 block_until_ready", "dur": 9e9},
              {"ph": "i", "name": "ffi_call.3"}]
    rows = aggregate(events, kinds, steps=2)
    assert rows == [
        {"kind": "conv_fwd", "ms_per_step": 2.0, "calls_per_step": 1.0, "share": 0.5},
        {"kind": "bn_fwd", "ms_per_step": 1.0, "calls_per_step": 0.5, "share": 0.25},
        {"kind": "add_fusion", "ms_per_step": 1.0, "calls_per_step": 0.5, "share": 0.25}]
    with pytest.raises(SystemExit):
        main(["--density", "0"])


def test_sparse_conv_ticket_mode_measures_each_layer_shape_at_its_own_density():
    from benchmarks.sparse_conv import main, ticket_layers, ticket_totals
    layers = ticket_layers("resnet20", 0.1074)
    counts = {shape: count for shape, (_, count) in layers.items()}
    # ResNet-20 after the stem: 6 + 1 + 5 + 1 + 5 3x3 convolutions and two 1x1 shortcuts
    assert counts == {(32, 16, 16, 1, 3): 6, (32, 16, 32, 2, 3): 1, (16, 32, 32, 1, 3): 5,
                      (16, 32, 64, 2, 3): 1, (8, 64, 64, 1, 3): 5, (32, 16, 32, 2, 1): 1,
                      (16, 32, 64, 2, 1): 1}
    density = {shape[:3]: d for shape, (d, _) in layers.items() if shape[4] == 3}
    # global magnitude at initialisation prunes the wide late layers hardest
    assert density[(32, 16, 16)] > density[(16, 32, 32)] > density[(8, 64, 64)]
    records = [{"pass": "forward", "layers": 6, "dense_ms": 2.0, "sparse_ms": 1.0, "auto_ms": 1.5},
               {"pass": "forward", "layers": 1, "dense_ms": 4.0, "sparse_ms": 1.0, "auto_ms": 1.0}]
    assert ticket_totals(records) == {"forward": {"dense": 16.0, "sparse": 7.0, "auto": 10.0}}
    with pytest.raises(SystemExit):
        main(["--ticket", "1.5"])


def test_sparse_conv_ticket_mode_writes_the_auto_path_and_totals(tmp_path):
    out = tmp_path / "ticket.json"
    subprocess.run([sys.executable, "-m", "benchmarks.sparse_conv", "--ticket", "0.1074",
                    "--batch-size", "2", "--steps", "1", "--repeats", "1", "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert report["ticket"] == {"model": "resnet20", "density": 0.1074,
                                "totals_ms": report["ticket"]["totals_ms"]}
    assert set(report["ticket"]["totals_ms"]) == {"forward", "input_grad", "filter_grad",
                                                  "backward"}
    assert len(report["records"]) == 7 * 4
    assert all(r["auto_ms"] > 0 and r["layers"] >= 1 for r in report["records"])


def test_tile_loop_benchmark_reports_the_three_offset_sets(tmp_path):
    out = tmp_path / "tile.json"
    subprocess.run([sys.executable, "-m", "benchmarks.tile_loop", "--reps", "1000", "--out",
                    str(out)], cwd=REPO, check=True, capture_output=True)
    report = json.loads(out.read_text())
    rates = report["gflops_one_core"]
    assert report["options"]["reps"] == 1000  # the settings that measured it, recorded
    assert not out.with_name(out.name + ".tmp").exists()
    assert set(rates) == {"kernel_offsets", "aligned", "misaligned_by_3"}
    assert all(value > 0 for value in rates.values())

