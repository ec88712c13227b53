"""benchmarks.gpu_profile: kernel categories, per-step sums, the PyTorch trace reader and the
argument errors (fast); a CPU smoke run of the JAX variants (slow)."""

import json

import pytest

from benchmarks import gpu_profile


@pytest.mark.parametrize("kernel, expected", [
    ("sm90_xmma_fprop_implicit_gemm_f32f32_tf32f32_f32_nhwckrsc_nhwc", "convolution"),
    ("cudnn::bn_fw_tr_1C11_kernel_NCHW", "batch norm"),
    ("void cudnn::batchnorm_bwtr_nhwc_semiPersist<float, float, float, 512>", "batch norm"),
    ("void cudnn::engines_precompiled::convertTensor_kernel<float, float>", "layout conversion"),
    ("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32", "matrix product"),
    ("Memcpy DtoD (Device -> Device)", "copy"),
    ("input_reduce_fusion_3", "reduction"),
    ("loop_multiply_fusion_12", "other")])
def test_kernels_fall_into_the_first_matching_category(kernel, expected):
    assert gpu_profile.category(kernel) == expected


def test_summaries_are_per_step_and_rank_kernels_by_time():
    kernels = [("conv_a", 300.0), ("loop_add_fusion", 50.0), ("conv_a", 300.0),
               ("loop_add_fusion", 50.0), ("Memcpy HtoD", 100.0)]
    summary = gpu_profile.summarize(kernels, steps=2, step_ms=1.0)
    assert summary["kernel_ms_per_step"] == 0.4  # 800 us over 2 steps
    assert summary["kernels_per_step"] == 2.5
    assert summary["gpu_busy_share"] == 0.4
    assert summary["ms_per_step_by_category"] == {"convolution": 0.3, "copy": 0.05,
                                                  "other": 0.05}
    first = summary["kernels"][0]
    assert (first["name"], first["ms_per_step"], first["calls_per_step"]) == ("conv_a", 0.3, 1.0)
    assert gpu_profile.summarize([], steps=2, step_ms=1.0) == {"kernels_found": 0}


def test_the_pytorch_trace_reader_keeps_device_events_only(tmp_path):
    trace = {"traceEvents": [
        {"cat": "kernel", "name": "void cudnn::conv", "dur": 12.5},
        {"cat": "gpu_memcpy", "name": "Memcpy DtoD", "dur": 1},
        {"cat": "cpu_op", "name": "aten::conv2d", "dur": 40},
        {"cat": "cuda_runtime", "name": "cudaLaunchKernel", "dur": 3},
        {"ph": "M", "name": "process_name"}]}
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(trace))
    assert gpu_profile.chrome_trace_kernels(str(path)) == [("void cudnn::conv", 12.5),
                                                           ("Memcpy DtoD", 1.0)]


@pytest.mark.parametrize("argv, message", [
    (["--norm-impls", "fused,batch"], "--norm-impls: ['batch'] not allowed"),
    (["--norm-impls", ","], "--norm-impls"),
    (["--profile-steps", "0"], "--profile-steps must be positive"),
    (["--batch", "0"], "--batch 0: at least 1")])
def test_bad_arguments_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit):
        gpu_profile.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_a_cpu_smoke_run_times_both_norm_impls_and_finds_no_device_kernels(tmp_path):
    out = tmp_path / "profile.json"
    gpu_profile.main(["--model", "resnet20", "--batch", "4", "--warmup", "1", "--steps", "1",
                      "--blocks", "1", "--profile-steps", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert [v["norm_impl"] for v in report["variants"]] == ["fused", "flax"]
    for variant in report["variants"]:
        assert variant["step_ms"] > 0 and variant["kernels_found"] == 0
