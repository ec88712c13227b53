"""benchmarks.gpu_check: the peak table and MFU arithmetic, the row plan and the time budget, the
study's config, argument errors (fast); and (slow) the whole check in smoke mode on the CPU, with
every section in its JSON."""

import gzip
import json
import lzma
import subprocess
import sys

import pytest

from benchmarks import gpu_check, mfu
from benchmarks.gpu_check_workers import set_key, study_overrides
from tests.conftest import CIFAR10_DIR, REPO


@pytest.mark.parametrize("device, match", [
    ("NVIDIA H200", "H200"), ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("cpu", None), ("Tesla V100-SXM2-16GB", None)])
def test_the_peak_table_matches_device_names_most_specific_first(device, match):
    found = mfu.peak_for(device)
    assert (found and found[0]) == match
    if match == "H200":
        assert found[1] == {"bfloat16": 989.5, "tf32": 494.5, "float32": 67.0}


def test_mfu_is_achieved_flops_over_the_peak_of_the_dtype():
    assert mfu.mfu(1000.0, 1e9, 1.0) == pytest.approx(1.0)  # 1e12 FLOP/s of 1 TFLOP/s
    assert mfu.mfu(1000.0, 1e9, None) is None
    rows = [{"framework": "jax", "model": "resnet20", "batch": 128, "precision": "bfloat16",
             "images_per_sec": 40000.0, "flops_per_image": 244_879_104.0},
            {"framework": "jax", "model": "resnet20", "batch": 128, "precision": "float32",
             "images_per_sec": 20000.0, "flops_per_image": 244_879_104.0},
            {"framework": "jax", "model": "resnet110", "batch": 1024, "precision": "float32",
             "skipped": "would not finish"}]
    section = mfu.mfu_section(rows, "NVIDIA H200")
    bf16, fp32 = section["rows"]  # the skipped row has no throughput and no MFU
    assert bf16["mfu"] == round(40000 * 244_879_104 / 989.5e12, 4)
    assert bf16["achieved_tflops"] == round(40000 * 244_879_104 / 1e12, 3)
    assert fp32["peak_basis"] == "tf32"
    assert fp32["mfu"] == round(20000 * 244_879_104 / 494.5e12, 4)
    assert fp32["mfu_vs_float32_non_tensor"] == round(20000 * 244_879_104 / 67e12, 4)
    unknown = mfu.mfu_section(rows, "cpu")
    assert [r["mfu"] for r in unknown["rows"]] == [None, None]
    assert "no peak FLOP/s known for device 'cpu'" in unknown["note"]


def test_the_gpu_plan_runs_small_batches_first_and_leaves_out_the_skipped_row():
    plan = gpu_check.resolve(gpu_check.parse_args([]), smoke=False)
    rows = [tuple(row) for row in plan["rows"]]
    assert len(rows) == 11 and ("resnet110", 1024, "float32") not in rows
    assert {batch for _, batch, _ in rows[:6]} == {128}
    assert sum(plan["caps"].values()) + 10 <= plan["budget"] <= 540  # 9 minutes
    smoke = gpu_check.resolve(gpu_check.parse_args(["--models", "resnet56"]), smoke=True)
    assert smoke["rows"] == [("resnet56", 8, "float32"), ("resnet56", 8, "bfloat16")]


def test_out_as_a_folder_names_the_file_after_the_device_and_the_date(tmp_path):
    assert gpu_check.out_path(str(tmp_path), "NVIDIA H200", "2026-12-03") == str(
        tmp_path / "gpu_check_nvidia_h200_2026-12-03.json")
    assert gpu_check.out_path("x/report.json", "cpu", "2026-12-03") == "x/report.json"
    # the folder gpu_check.sh gives is accepted by the argument check, as the help says
    assert gpu_check.parse_args(["--out", str(tmp_path)]).out == str(tmp_path)


def test_sections_without_time_left_are_skipped_saying_so():
    plan = gpu_check.resolve(gpu_check.parse_args(["--sections", "tests,study",
                                                   "--budget", "5"]), smoke=False)
    import time
    results = gpu_check.run_sections(plan, time.monotonic())
    assert results["tests"] == {"status": "skipped", "note": "no time left in --budget"}
    assert results["train_step"]["note"] == "not in --sections"


def test_a_missing_cifar_folder_skips_the_study_with_a_note(tmp_path):
    plan = gpu_check.resolve(gpu_check.parse_args(["--cifar", str(tmp_path / "absent")]),
                             smoke=False)
    result = gpu_check.section_study(plan, 100.0)
    assert result["status"] == "skipped" and "does not exist" in result["note"]


def test_the_study_overrides_make_a_valid_shrunk_resnet20_config(tmp_path):
    from experiments import cifar10_resnet20
    from lottery_kd.config import validate
    for smoke in (False, True):
        config = cifar10_resnet20.get_config()
        for key, value in study_overrides(10000, "bfloat16", smoke, str(tmp_path)).items():
            set_key(config, key, value)
        validate(config)
        assert (config.train.epochs, config.prune.levels) == (2, 1)
        assert config.lottery.variants == "lt,kd"


def test_pytest_counts_reads_the_summary_and_the_failed_ids():
    output = ("..F.\nFAILED tests/test_x.py::test_a - AssertionError: no\n"
              "ERROR tests/test_y.py::test_b\n"
              "1 failed, 3 passed, 2 skipped, 4 deselected, 1 error in 12.3s\n")
    counts = gpu_check.pytest_counts(output)
    assert (counts["passed"], counts["failed"], counts["errors"], counts["skipped"],
            counts["deselected"]) == (3, 1, 1, 2, 4)
    assert counts["failures"] == ["tests/test_x.py::test_a", "tests/test_y.py::test_b"]
    killed = ("collecting ... collected 5 items / 1 deselected / 4 selected\n"
              "tests/test_x.py::test_a PASSED     [ 10%]\n"
              "tests/test_x.py::test_b[0.9-1e-4] FAILED [ 20%]\n"
              "tests/test_x.py::test_c SKIPPED (no GPU) [ 30%]\n"
              "tests/test_x.py::test_d ")
    counts = gpu_check.pytest_counts(killed)  # killed by the time cap: no summary line yet
    assert (counts["passed"], counts["failed"], counts["skipped"]) == (1, 1, 1)
    assert counts["failures"] == ["tests/test_x.py::test_b[0.9-1e-4]"]
    assert counts["summary"] == "(no summary: pytest did not finish)"


def test_a_section_past_its_time_is_killed_keeping_its_output():
    code = "import time; print('started', flush=True); time.sleep(120)"
    done = gpu_check.run_process([sys.executable, "-c", code], 2.0, gpu_check.CHILD_ENV)
    assert done.status == "timeout" and done.seconds < 30 and "started" in done.output


@pytest.mark.parametrize("arguments, message", [
    (["--sections", "tests,speed"], "--sections: speed not allowed"),
    (["--batches", "128,0"], "--batches '128,0'"),
    (["--models", "resnet18"], "--models: resnet18 not allowed"),
    (["--skip", "resnet110:big:float32"], "MODEL:BATCH:PRECISION"),
    (["--steps", "0"], "--steps 0: at least 1")])
def test_bad_options_are_refused_by_name(arguments, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        gpu_check.parse_args(arguments)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_cifar_pointing_at_a_file_or_a_wrong_folder_is_one_clear_line(tmp_path):
    file = tmp_path / "data_batch_1.bin"
    file.write_bytes(b"")
    for target, message in ((file, "is a file, not a folder"),
                            (tmp_path, "lacks the CIFAR-10 binary files: it needs")):
        done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--cifar",
                               str(target)], capture_output=True, text=True, cwd=REPO,
                              timeout=120)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_cifar_folders_are_told_apart_full_subset_or_neither(tmp_path, capsys):
    for name in ("data_batch_1.bin", "test_batch.bin"):
        (tmp_path / name).write_bytes(b"")
    assert gpu_check.cifar_files(str(tmp_path)) == "subset"
    for i in range(2, 6):
        (tmp_path / f"data_batch_{i}.bin").write_bytes(b"")
    assert gpu_check.cifar_files(str(tmp_path)) == "full"
    (tmp_path / "test_batch.bin").unlink()
    assert gpu_check.cifar_files(str(tmp_path)) is None
    (tmp_path / "test_batch.bin").write_bytes(b"")
    (tmp_path / "data_batch_5.bin").unlink()
    with pytest.raises(SystemExit):  # the subset holds 10,000 training images
        gpu_check.parse_args(["--cifar", str(tmp_path), "--study-train-subset", "20000"])
    assert "holds data_batch_1.bin alone" in capsys.readouterr().err


@pytest.mark.skipif(not CIFAR10_DIR.is_dir(), reason=f"no CIFAR-10 files in {CIFAR10_DIR}")
def test_the_subset_reader_reads_the_first_training_file_and_the_test_set():
    from benchmarks.gpu_check_workers import subset_reader
    train_x, train_y, test_x, test_y = subset_reader(str(CIFAR10_DIR))()
    assert train_x.shape == test_x.shape == (10000, 32, 32, 3)
    assert set(train_y.tolist()) == set(test_y.tolist()) == set(range(10))


@pytest.mark.slow
def test_the_smoke_check_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--smoke",
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] and report["date"] and report["device"]
    sections = report["sections"]
    assert set(sections) == {"tests", "train_step", "pytorch", "mfu", "study"}
    tests = sections["tests"]
    assert tests["status"] == "ok" and tests["passed"] > 0 and tests["failed"] == 0, tests
    rows = sections["train_step"]["rows"]
    assert [(r["model"], r["batch"], r["precision"]) for r in rows] == [
        ("resnet20", 8, "float32"), ("resnet20", 8, "bfloat16")], rows
    for row in rows:
        assert row["images_per_sec"] > 0 and row["compile_s"] > 0 and row["loss_finite"]
        assert row["flops_per_image"] == pytest.approx(244_879_104)
    assert rows[1]["conv_impl"] == "xla"  # bfloat16: XLA's convolutions
    torch = sections["pytorch"]
    assert (torch["status"] == "ok") if "note" not in torch else ("not installed" in torch["note"])
    mfu_rows = sections["mfu"]["rows"]
    assert len(mfu_rows) >= 2 and all("mfu" in r and r["achieved_tflops"] > 0 for r in mfu_rows)
    study = sections["study"]
    assert study["status"] == "ok", study
    assert [(r["level"], r["variant"]) for r in study["rows"]] == [
        (0, "dense"), (1, "lt"), (1, "kd")]
    assert all(0 <= r["test_accuracy"] <= 1 and r["seconds"] > 0 for r in study["rows"])


def test_the_shell_wrapper_unpacks_xz_and_gzipped_cifar_files_before_the_check(tmp_path):
    """xz (or gzip) lets the two files travel through the device tool's 64 MiB; gpu_check.sh
    unpacks them in the --cifar folder (here one lacking data_batch_1.bin: the check then
    refuses it)."""
    cifar = tmp_path / "cifar10"
    cifar.mkdir()
    payload = bytes(range(256)) * 40
    (cifar / "test_batch.bin.xz").write_bytes(lzma.compress(payload))
    (cifar / "data_batch_2.bin.gz").write_bytes(gzip.compress(payload[::-1]))
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke",
                           "--cifar", str(cifar), "--sections", "study"],
                          capture_output=True, text=True, timeout=120)
    assert done.stderr.count("unpacking") == 2
    assert (cifar / "test_batch.bin").read_bytes() == payload
    assert (cifar / "data_batch_2.bin").read_bytes() == payload[::-1]
    assert sorted(path.name for path in cifar.iterdir()) == ["data_batch_2.bin", "test_batch.bin"]
    assert done.returncode == 2 and "data_batch_1.bin" in done.stderr


def test_the_row_pace_scales_with_the_square_root_of_depth():
    """A ResNet-20 row of 45 s: ResNet-56 is expected at 45 * sqrt(2.8) = 75 s (it took about
    60 on an H200), not 126, so it is measured when 100 s are left; ResNet-110's 105 s is not."""
    from benchmarks.gpu_check_workers import Pace
    pace = Pace(100.0)
    pace.record("resnet20", 45.0)
    assert pace.estimate("resnet56") == pytest.approx(45.0 * (56 / 20) ** 0.5)
    assert pace.fits("resnet56") and not pace.fits("resnet110")
    pace.record("resnet56", 40.0)  # faster per root depth: the slowest row still sets the pace
    assert pace.estimate("resnet20") == pytest.approx(45.0)
