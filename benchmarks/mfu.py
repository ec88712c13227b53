"""Model FLOP utilisation: achieved training FLOP/s over the device's dense peak for the dtype.

Achieved: images/s x dense training FLOPs per image (lottery_kd.models.flops: forward, input
gradient and filter gradient of every conv and fc kernel; BatchNorm, activations, loss and
optimizer not counted, so the figure is slightly low). Peak: PEAKS, by device name.
"""

from __future__ import annotations

from typing import Optional

# Dense peak TFLOP/s (no 2:4 sparsity: NVIDIA's "with sparsity" figures halved), first matching
# substring of the device name wins. Sources: NVIDIA H200 Tensor Core GPU datasheet (H200 SXM,
# H200 NVL), NVIDIA H100 Tensor Core GPU datasheet (SXM, PCIe, NVL), NVIDIA A100 Tensor Core GPU
# datasheet. float32 rows are measured against "tf32": JAX's default precision lets XLA run
# float32 convolutions and matmuls on TF32 tensor cores (docs.jax.dev, "Matmul precision"), as
# cuDNN does for PyTorch (torch.backends.cudnn.allow_tf32 is on by default); "float32" is the
# non-tensor-core peak, given beside it.
PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200 NVL", {"bfloat16": 835.5, "tf32": 417.5, "float32": 60.0}),
    ("H200", {"bfloat16": 989.5, "tf32": 494.5, "float32": 67.0}),
    ("H100 NVL", {"bfloat16": 835.5, "tf32": 417.5, "float32": 60.0}),
    ("H100 PCIe", {"bfloat16": 756.5, "tf32": 378.0, "float32": 51.0}),
    ("H100", {"bfloat16": 989.5, "tf32": 494.5, "float32": 67.0}),
    ("A100", {"bfloat16": 312.0, "tf32": 156.0, "float32": 19.5}),
)
PEAK_SOURCE = ("NVIDIA datasheets (H200, H100, A100 Tensor Core GPU), dense figures; float32 "
               "rows against the TF32 tensor-core peak (JAX and cuDNN default to TF32 there)")


def peak_for(device_kind: str) -> Optional[tuple[str, dict[str, float]]]:
    """(matched name, dense peaks in TFLOP/s) of the first PEAKS entry in `device_kind`, or None."""
    for name, peaks in PEAKS:
        if name.lower() in device_kind.lower():
            return name, peaks
    return None


def mfu(images_per_sec: float, flops_per_image: float, peak_tflops: Optional[float]
        ) -> Optional[float]:
    """Achieved training FLOP/s over the peak (None without a peak)."""
    if not peak_tflops:
        return None
    return images_per_sec * flops_per_image / (peak_tflops * 1e12)


def mfu_section(rows: list[dict], device_kind: str) -> dict:
    """Model FLOP utilisation of every measured throughput row on `device_kind`."""
    found = peak_for(device_kind)
    section = {"device": device_kind, "peak_match": found[0] if found else None,
               "peak_tflops": found[1] if found else None, "peak_source": PEAK_SOURCE,
               "rows": []}
    if found is None:
        section["note"] = (f"no peak FLOP/s known for device {device_kind!r}: mfu is null "
                           "(add it to PEAKS in benchmarks/mfu.py)")
    for row in rows:
        if "images_per_sec" not in row:
            continue
        achieved = row["images_per_sec"] * row["flops_per_image"]
        peaks = found[1] if found else {}
        basis = "bfloat16" if row["precision"] == "bfloat16" else "tf32"
        utilisation = mfu(row["images_per_sec"], row["flops_per_image"], peaks.get(basis))
        out = {key: row[key] for key in ("framework", "model", "batch", "precision")}
        out.update(images_per_sec=row["images_per_sec"], achieved_tflops=round(achieved / 1e12, 3),
                   peak_basis=basis, mfu=None if utilisation is None else round(utilisation, 4))
        if row["precision"] == "float32":
            fp32 = mfu(row["images_per_sec"], row["flops_per_image"], peaks.get("float32"))
            out["mfu_vs_float32_non_tensor"] = None if fp32 is None else round(fp32, 4)
        section["rows"].append(out)
    return section
