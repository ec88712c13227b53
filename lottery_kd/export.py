"""One ticket as a compact sparse file, and a predict function that runs it.

    python -m lottery_kd.export WORKDIR --ticket level_L_V --out FILE.npz

The file is a numpy .npz (no pickle): a JSON header (format, model, classes, input shape and
normalisation, the study and ticket it came from, per kernel its shape and density) and, per
kernel, its BatchNorm folded in (w * gamma / sqrt(var + eps) for each output channel; the bias
beta - mean * gamma / sqrt(var + eps)) stored as a bitmap of the unpruned positions
(np.packbits) and their values in order, with the folded biases and the fc bias dense. At
density 0.1074 a ResNet-20 kernel costs 0.125 + 0.43 bytes per weight instead of 4.

`load(FILE)` rebuilds the network from the model registry, its BatchNorm layers reduced to
adding the folded bias, and returns a `Ticket` whose `predict(images)` maps uint8 (or float)
NHWC images, normalised as the study did, to logits: the masked network's, to float tolerance.
A CIFAR ResNet's convolutions run on one CPU device on the masked kernels that skip the pruned
weights (kernels.sparse_conv, model.conv_impl='sparse'); other models, and every model
elsewhere, on the model's dense path (`Ticket.conv_impl` says which).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from lottery_kd.runtime.out_paths import check_out_file

FORMAT = "lottery_kd.ticket/1"
_NEUTRAL = {"scale": 1.0, "mean": 0.0, "var": None}  # a folded BatchNorm adds its bias only
PyTree = Any


class ExportError(ValueError):
    """A ticket that cannot be exported, or a file that is not an exported ticket."""


def _norm_of(conv_path: str) -> str:
    """The BatchNorm that follows a conv: stem_conv -> stem_bn, conv2 -> bn2, shortcut_conv ->
    shortcut_bn (the naming of every model in lottery_kd.models)."""
    *scope, name, _ = conv_path.split("/")
    return "/".join([*scope, name.replace("conv", "bn")])


def fold_batch_norm(params: dict[str, np.ndarray], stats: dict[str, np.ndarray],
                    epsilon: float) -> dict[str, np.ndarray]:
    """{path: array} of the folded network: each conv kernel scaled per output channel by its
    BatchNorm, `<bn>/bias` the folded bias, every other parameter as it is."""
    folded = dict(params)
    for path in [p for p in params if p.endswith("kernel") and np.ndim(params[p]) == 4]:
        bn = _norm_of(path)
        if f"{bn}/scale" not in params:
            raise ExportError(f"{path}: no BatchNorm {bn} follows it; export folds BatchNorm "
                              "into the convolutions of lottery_kd's ResNets and convnets")
        factor = params[f"{bn}/scale"] / np.sqrt(stats[f"{bn}/var"] + epsilon)
        folded[path] = (params[path] * factor).astype(np.float32)
        folded[f"{bn}/bias"] = (params[f"{bn}/bias"] - stats[f"{bn}/mean"] * factor
                                ).astype(np.float32)
        del folded[f"{bn}/scale"]
    return folded


def encode(folded: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """(per-kernel header entries, arrays): masked kernels as bitmap + values, the rest dense."""
    layers, arrays = {}, {}
    for path, value in folded.items():
        mask = masks.get(path)
        if mask is None or path.endswith(("bias", "scale")):
            arrays[f"dense:{path}"] = value
            continue
        mask = np.asarray(mask, bool)
        arrays[f"bits:{path}"] = np.packbits(mask.ravel())
        arrays[f"values:{path}"] = value.ravel()[mask.ravel()].astype(np.float32)
        layers[path] = {"shape": list(value.shape), "density": float(mask.mean())}
    return layers, arrays


def decode(arrays: dict[str, np.ndarray], layers: dict) -> dict[str, np.ndarray]:
    """{path: dense array} of the folded network, pruned positions exactly 0.0."""
    out = {key.split(":", 1)[1]: value for key, value in arrays.items()
           if key.startswith("dense:")}
    for path, info in layers.items():
        size = int(np.prod(info["shape"]))
        mask = np.unpackbits(arrays[f"bits:{path}"], count=size).astype(bool)
        kernel = np.zeros(size, np.float32)
        kernel[mask] = arrays[f"values:{path}"]
        out[path] = kernel.reshape(info["shape"])
    return out


@dataclasses.dataclass
class Ticket:
    """An exported ticket: its header, a jitted predict(images) -> logits, and the convolution
    path it runs on ("sparse": the masked CPU kernels, each layer dense above its crossover)."""

    header: dict
    predict: Callable[[Any], Any]
    conv_impl: str = "auto"


def is_ticket_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a file this module wrote (an .npz whose header names FORMAT): the only
    kind of file `export --out` replaces."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["header"])).get("format") == FORMAT
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile):
        return False  # a half-copied .npz is a damaged zip: no ticket either


def load(path: str | os.PathLike) -> Ticket:
    """The ticket in `path` (written by `export_ticket`); ExportError if it is not one."""
    import jax
    import jax.numpy as jnp

    from flax import traverse_util

    from lottery_kd.data.augment import normalize
    from lottery_kd.kernels import build, sparse_conv
    from lottery_kd.models import CONV_IMPL_MODELS, get_model
    from lottery_kd.models.layers import BATCH_NORM_EPSILON
    from lottery_kd.sparsity.masks import named_leaves
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        header = json.loads(str(arrays.pop("header")))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ExportError(f"{path}: not an exported ticket ({error})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else header
        raise ExportError(f"{path}: format {found!r}, expected {FORMAT!r}")
    missing = [key for key in ("layers", "model", "classes", "input_shape", "normalization",
                               "norm_impl") if key not in header]
    try:
        weights = {} if missing else decode(arrays, header["layers"])
    except (KeyError, ValueError, TypeError) as error:
        missing = [str(error)]
    if missing:
        raise ExportError(f"{path}: an incomplete exported ticket (missing or unreadable "
                          f"{', '.join(missing)}); export it again")
    skips = (header["model"] in CONV_IMPL_MODELS and build.single_cpu_device()
             and sparse_conv.native_available())  # the masked kernels serve the CIFAR ResNets
    conv_impl = "sparse" if skips else "auto"  # "auto": the model's dense path
    model = get_model(header["model"], header["classes"], norm_impl=header["norm_impl"],
                      conv_impl=conv_impl)
    template = jax.eval_shape(lambda key: model.init(
        key, jnp.zeros((1, *header["input_shape"])), train=False), jax.random.key(0))
    variables = {}
    for collection, tree in template.items():  # BatchNorm: scale 1, mean 0, var 1 - eps
        filled = {}
        for name, leaf in named_leaves(tree):
            value = weights.get(name)
            kind = name.rsplit("/", 1)[-1]
            if value is None and kind not in _NEUTRAL:
                raise ExportError(f"{path}: {name} is missing; export it again")
            if value is None:
                fill = 1.0 - BATCH_NORM_EPSILON if kind == "var" else _NEUTRAL[kind]
                value = np.full(leaf.shape, fill, np.float32)
            filled[name] = value
        variables[collection] = traverse_util.unflatten_dict(filled, sep="/")
    mean, std = header["normalization"]["mean"], header["normalization"]["std"]
    predict = jax.jit(lambda images: model.apply(variables, normalize(images, mean, std),
                                                 train=False))
    return Ticket(header, predict, conv_impl)


def write_ticket(out: str | os.PathLike, snapshot: PyTree, header: dict) -> dict:
    """Write the masked network of `snapshot` ({"params", "batch_stats", "masks"}, host arrays)
    to `out`, BatchNorm folded, with `header` (model, classes, input_shape, norm_impl,
    normalization, ...) completed by the format and the per-kernel layers; returns the header."""
    from lottery_kd.models.layers import BATCH_NORM_EPSILON
    from lottery_kd.sparsity.masks import named_leaves
    masks = dict(named_leaves(snapshot["masks"]))
    params = {name: np.asarray(p) * np.asarray(masks[name], np.float32)
              for name, p in named_leaves(snapshot["params"])}  # as the study evaluates it
    folded = fold_batch_norm(params, dict(named_leaves(snapshot["batch_stats"])),
                             BATCH_NORM_EPSILON)
    pruned = {name: m for name, m in masks.items() if name.endswith("kernel") and not np.all(m)}
    layers, arrays = encode(folded, pruned)  # kernels without a pruned weight stay dense
    header = {"format": FORMAT, **header, "layers": layers}
    buffer = io.BytesIO()
    np.savez(buffer, header=np.array(json.dumps(header)), **arrays)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    temporary.write_bytes(buffer.getvalue())
    os.replace(temporary, out)  # a reader never sees half a file
    return header


def export_ticket(workdir: str | os.PathLike, ticket: str, out: str | os.PathLike) -> dict:
    """Write `ticket` of the study in `workdir` to `out`; returns the header, with the sizes in
    bytes of the file, of the ticket's snapshot and of the dense network's."""
    import jax

    from lottery_kd.analysis.sweep import open_study
    study = open_study(workdir)
    if study.config.model.basis:
        raise ExportError(f"{workdir}: a ticket in another basis (model.basis="
                          f"{study.config.model.basis}) is dense in pixel space; export stores "
                          "pixel-space sparse kernels")
    snapshot = jax.device_get(study.load_existing(ticket, "--ticket"))
    data = study.data
    header = write_ticket(out, snapshot, {
        "model": study.config.model.name, "classes": data.num_classes,
        "input_shape": list(data.image_shape), "norm_impl": study.config.model.norm_impl,
        "normalization": {"mean": _listed(data.mean), "std": _listed(data.std)},
        "study": str(Path(workdir).resolve()), "ticket": ticket})
    return {**header, "file_bytes": Path(out).stat().st_size,
            "snapshot_bytes": _folder_bytes(study.snapshots.path(ticket)),
            "dense_snapshot_bytes": _folder_bytes(study.snapshots.path("level_0_dense"))}


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def agreement(workdir: str | os.PathLike, ticket: str, path: str | os.PathLike) -> dict:
    """The exported file against the masked network of the study, on the study's whole test set:
    examples, how many argmaxes differ, the largest |logit difference|, the largest logit, the
    exported file's test accuracy and the study's row for the ticket (None without one)."""
    import jax

    from lottery_kd.analysis.sweep import open_study
    from lottery_kd.data.augment import normalize
    from lottery_kd.sparsity import masks as masks_lib
    study = open_study(workdir)
    snapshot = study.load_existing(ticket, "--ticket")
    variables = {"params": masks_lib.apply(snapshot["params"], snapshot["masks"]),
                 "batch_stats": snapshot["batch_stats"]}
    mean, std = study.data.mean, study.data.std
    reference = jax.jit(lambda images: study.model.apply(variables, normalize(images, mean, std),
                                                         train=False))
    exported = load(path)
    examples = differ = correct = 0
    largest_gap = largest_logit = 0.0
    for images, labels, valid in study.data.test.batches():
        keep = np.asarray(valid)
        ours = np.asarray(exported.predict(images))[keep]
        theirs = np.asarray(reference(images))[keep]
        examples += int(keep.sum())
        differ += int(np.sum(ours.argmax(-1) != theirs.argmax(-1)))
        correct += int(np.sum(ours.argmax(-1) == np.asarray(labels)[keep]))
        largest_gap = max(largest_gap, float(np.max(np.abs(ours - theirs), initial=0.0)))
        largest_logit = max(largest_logit, float(np.max(np.abs(theirs), initial=0.0)))
    return {"examples": examples, "argmax_differ": differ, "max_abs_logit_diff": largest_gap,
            "max_abs_logit": largest_logit, "conv_impl": exported.conv_impl,
            "test_accuracy": correct / max(1, examples), "row": _ticket_row(workdir, ticket)}


def _ticket_row(workdir: str | os.PathLike, ticket: str) -> Optional[dict]:
    """The study's result row of the run whose final snapshot `ticket` is, or None."""
    from lottery_kd.study.results import read_rows
    from lottery_kd.study.variants import snapshot_name
    from lottery_kd.study.workdir import Workdir
    rows = read_rows(str(Workdir(workdir).results)) if Workdir(workdir).results.is_file() else []
    return next((r for r in rows if snapshot_name(r["level"], r["variant"]) == ticket), None)


def _listed(values: Optional[Sequence[float]]) -> Optional[list[float]]:
    return None if values is None else [float(v) for v in values]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m lottery_kd.export`: 0 when written, 2 with one line saying why not."""
    parser = argparse.ArgumentParser(prog="python -m lottery_kd.export",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("workdir", help="the study's --workdir")
    parser.add_argument("--ticket", required=True, help="a snapshot of the study, e.g. level_1_kd")
    parser.add_argument("--out", required=True, help="the file to write (e.g. ticket.npz)")
    parser.add_argument("--check", action="store_true", help="then compare its predictions "
                        "with the masked network's on the study's whole test set")
    args = parser.parse_args(argv)
    try:
        check_out_file(args.out, replaceable=is_ticket_file,  # before the study is loaded
                       kind="an exported ticket")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    replaced = Path(args.out).exists()
    try:
        info = export_ticket(args.workdir, args.ticket, args.out)
    except (ExportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sizes = [(v["density"], int(np.prod(v["shape"]))) for v in info["layers"].values()]
    pruned = (f"{len(sizes)} pruned kernels at density "
              f"{sum(d * n for d, n in sizes) / sum(n for _, n in sizes):.4f}" if sizes
              else "no pruned kernel")
    print(f"{'replaced' if replaced else 'wrote'} {args.out}: "
          f"{info['file_bytes'] / 1e6:.3f} MB ({pruned}); on disk, the "
          f"ticket's snapshot is {info['snapshot_bytes'] / 1e6:.3f} MB and the dense "
          f"network's {info['dense_snapshot_bytes'] / 1e6:.3f} MB (Orbax, compressed)")
    if args.check:
        check = agreement(args.workdir, args.ticket, args.out)
        print(f"test set: {check['examples']} images, {check['argmax_differ']} predictions "
              f"differ from the masked network's; largest logit difference "
              f"{check['max_abs_logit_diff']:.2e} (largest logit {check['max_abs_logit']:.2f}; "
              f"predict ran on conv_impl={check['conv_impl']!r}); its test accuracy "
              f"{100 * check['test_accuracy']:.2f} %" + (
                  f" (the study's row: {100 * check['row']['test_accuracy']:.2f} %)"
                  if check["row"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
