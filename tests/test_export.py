"""lottery_kd.export: a ticket as a compact sparse file (BatchNorm folded, only the unpruned
weights and a bitmap of their positions) whose predictions are the masked network's."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_kd import export
from lottery_kd.data.augment import normalize
from lottery_kd.kernels import sparse_conv
from lottery_kd.models import get_model
from lottery_kd.sparsity import masks as masks_lib, pruning
from lottery_kd.study import lottery, results
from tests.conftest import CIFAR10_DIR, REPO, make_tiny_config


@pytest.mark.parametrize("norm_impl", ["fused", "flax"])
def test_a_resnet_with_trained_batch_norm_folds_into_its_sparse_kernels(tmp_path, norm_impl):
    """ResNet-20 with random BatchNorm statistics and affine terms, pruned to density 0.1074
    (shortcuts included): the exported file predicts the masked network's logits."""
    model = get_model("resnet20", 10, norm_impl=norm_impl, conv_impl="xla")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    keys = iter(jax.random.split(jax.random.key(1), 200))

    def jitter(tree, low, high):
        return jax.tree.map(lambda x: jax.random.uniform(next(keys), x.shape, minval=low,
                                                         maxval=high), tree)
    params = dict(variables["params"])
    stats = jitter(variables["batch_stats"], 0.2, 1.5)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jax.random.uniform(next(keys), x.shape, minval=0.5, maxval=1.5)
        if "scale" in str(path[-1]) else x, params)
    masks = pruning.get("magnitude_global")(params, masks_lib.create(params, "conv"),
                                            1 - 0.8 ** 10, scope="conv")
    snapshot = jax.device_get({"params": params, "batch_stats": stats, "masks": masks})
    images = jax.random.randint(next(keys), (64, 32, 32, 3), 0, 256).astype(jnp.uint8)
    mean, std = (120.0, 115.0, 100.0), (60.0, 62.0, 65.0)
    reference = model.apply({"params": masks_lib.apply(params, masks), "batch_stats": stats},
                            normalize(images, mean, std), train=False)
    path = tmp_path / "ticket.npz"
    header = export.write_ticket(path, snapshot, {
        "model": "resnet20", "classes": 10, "input_shape": [32, 32, 3], "norm_impl": norm_impl,
        "normalization": {"mean": list(mean), "std": list(std)}})
    assert len(header["layers"]) == 21  # every conv, shortcuts included; fc stays dense
    ticket = export.load(path)
    assert ticket.conv_impl == ("sparse" if sparse_conv.native_available() else "auto")
    logits = ticket.predict(images)
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    assert np.array_equal(np.argmax(logits, -1), np.argmax(reference, -1))
    kept = sum(int(np.sum(m)) for m in jax.tree.leaves(masks) if np.ndim(m) == 4)
    assert path.stat().st_size < 0.2 * 4 * sum(np.size(p) for p in jax.tree.leaves(params))
    assert sum(round(v["density"] * np.prod(v["shape"])) for v in header["layers"].values()) \
        == kept


def test_a_model_without_the_masked_kernels_exports_and_says_it_predicts_densely(tmp_path):
    """The digits convnet (like VGG and the WRN) runs XLA's convolutions whatever conv_impl
    says: its Ticket names the dense path ('auto'), not 'sparse', and still predicts the masked
    network's logits."""
    model = get_model("digits_convnet", 10, conv_impl="xla")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
    params = variables["params"]
    masks = pruning.get("magnitude_global")(params, masks_lib.create(params, "conv"), 0.8,
                                            scope="conv")
    images = jax.random.randint(jax.random.key(2), (8, 8, 8, 1), 0, 256).astype(jnp.uint8)
    mean, std = (7.0,), (5.0,)
    reference = model.apply({"params": masks_lib.apply(params, masks),
                             "batch_stats": variables["batch_stats"]},
                            normalize(images, mean, std), train=False)
    path = tmp_path / "digits.npz"
    export.write_ticket(path, jax.device_get({"params": params, "masks": masks,
                                              "batch_stats": variables["batch_stats"]}), {
        "model": "digits_convnet", "classes": 10, "input_shape": [8, 8, 1],
        "norm_impl": "fused", "normalization": {"mean": list(mean), "std": list(std)}})
    ticket = export.load(path)
    assert ticket.conv_impl == "auto"
    np.testing.assert_allclose(ticket.predict(images), reference, rtol=1e-4,
                               atol=1e-4 * np.abs(reference).max())


def test_decode_puts_every_value_back_and_pruned_positions_are_exactly_zero():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 5, 7)).astype(np.float32)
    mask = rng.random(kernel.shape) < 0.3
    folded = {"a/kernel": kernel * mask, "a/bias": np.ones(7, np.float32)}
    layers, arrays = export.encode(folded, {"a/kernel": mask})
    decoded = export.decode(arrays, layers)
    assert np.array_equal(decoded["a/kernel"], kernel * mask)
    assert np.all(decoded["a/kernel"][~mask] == 0.0) and decoded["a/bias"].tolist() == [1.0] * 7
    assert arrays["values:a/kernel"].size == mask.sum()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    config = make_tiny_config()
    config.prune.levels = 1
    config.lottery.variants = "lt"
    workdir = tmp_path_factory.mktemp("export_study")
    lottery.run(config, workdir, log=lambda *_: None)
    return workdir


def test_an_exported_ticket_predicts_what_the_study_evaluated_on_its_whole_test_set(study,
                                                                                    tmp_path):
    info = export.export_ticket(study, "level_1_lt", tmp_path / "t.npz")
    check = export.agreement(study, "level_1_lt", tmp_path / "t.npz")
    assert check["examples"] == 360 and check["argmax_differ"] == 0
    assert check["row"]["variant"] == "lt" and check["row"]["level"] == 1
    assert check["test_accuracy"] == pytest.approx(check["row"]["test_accuracy"], abs=1e-6)
    assert check["max_abs_logit_diff"] < 1e-4 * check["max_abs_logit"]
    assert info["file_bytes"] < info["dense_snapshot_bytes"]


def test_the_command_writes_and_checks_a_ticket(study, tmp_path, capsys):
    done = subprocess.run([sys.executable, "-m", "lottery_kd.export", str(study), "--ticket",
                           "level_1_lt", "--out", str(tmp_path / "t.npz"), "--check"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "0 predictions differ" in done.stdout and "density 0.8000" in done.stdout
    assert done.stdout.startswith(f"wrote {tmp_path / 't.npz'}: ")
    again = export.main([str(study), "--ticket", "level_1_lt", "--out", str(tmp_path / "t.npz")])
    assert again == 0  # an existing file is replaced, and the message says so
    assert capsys.readouterr().out.startswith(f"replaced {tmp_path / 't.npz'}: ")


def test_the_command_refuses_bad_input_in_one_line(study, tmp_path, capsys):
    for args, message in (
            ([study, "--ticket", "level_7_kd", "--out", tmp_path / "x.npz"],
             "tickets there: level_1_lt"),
            ([study, "--ticket", "level_1_lt", "--out", tmp_path], "is a folder"),
            ([tmp_path / "nothing", "--ticket", "level_1_lt", "--out", tmp_path / "y.npz"],
             "no such folder"),
            ([study, "--ticket", "level_1_lt", "--out", tmp_path / "junk.npz" / "t.npz"],
             "cannot be created"),
    ):
        (tmp_path / "junk.npz").write_bytes(b"not a ticket")  # a file, not a folder
        assert export.main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "y.npz").exists()
    with pytest.raises(export.ExportError, match="not an exported ticket"):
        export.load(tmp_path / "junk.npz")
    # only an exported ticket is replaced: not another file, not a study's own files
    config = (study / "config.json").read_bytes()
    for args, message in (
            ([study, "--ticket", "level_1_lt", "--out", tmp_path / "junk.npz"],
             "exists and is not an exported ticket"),
            ([study, "--ticket", "level_1_lt", "--out", study / "config.json"],
             f"is inside the study in {study}"),
            ([study, "--ticket", "level_1_lt", "--out", ""], "--out is empty")):
        assert export.main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert (tmp_path / "junk.npz").read_bytes() == b"not a ticket"
    assert (study / "config.json").read_bytes() == config


def test_a_half_copied_or_incomplete_ticket_file_gives_one_clear_error(study, tmp_path, capsys):
    """A truncated .npz (a damaged zip) is no ticket: the command refuses to replace it in one
    line and load says so; a ticket whose header or arrays lack a part names what is missing."""
    import json

    import numpy as np
    whole = tmp_path / "whole.npz"
    assert export.main([str(study), "--ticket", "level_1_lt", "--out", str(whole)]) == 0
    capsys.readouterr()
    half = tmp_path / "half.npz"
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert not export.is_ticket_file(half)
    with pytest.raises(export.ExportError, match="not an exported ticket"):
        export.load(half)
    assert export.main([str(study), "--ticket", "level_1_lt", "--out", str(half)]) == 2
    err = capsys.readouterr().err
    assert "exists and is not an exported ticket" in err and err.count("\n") == 1, err
    with np.load(whole) as data:
        arrays = {key: data[key] for key in data.files}
    header = json.loads(str(arrays["header"]))
    for drop_key, drop_array in (("norm_impl", None), (None, next(
            key for key in arrays if key.startswith("bits:")))):
        broken = dict(arrays)
        if drop_key:
            broken["header"] = np.array(json.dumps({k: v for k, v in header.items()
                                                    if k != drop_key}))
        else:
            del broken[drop_array]
        np.savez(tmp_path / "broken.npz", **broken)
        with pytest.raises(export.ExportError, match="incomplete exported ticket"):
            export.load(tmp_path / "broken.npz")


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR10_DIR.is_dir(), reason=f"no real CIFAR-10 at {CIFAR10_DIR}")
def test_a_real_cifar_resnet20_ticket_at_density_0_1074_exports_and_agrees(tmp_path):
    """The README's export example: a shrunk real-CIFAR ResNet-20 study (2 epochs on 2,560
    images, Renda's protocol), one-shot to density 0.1074, exported and checked on all 10,000
    test images."""
    workdir = tmp_path / "study"
    done = subprocess.run(
        [sys.executable, "-m", "experiments.cifar10_resnet20", f"--workdir={workdir}",
         f"--config.data.dir={CIFAR10_DIR}", "--config.train.epochs=2",
         "--config.train.milestones=1", "--config.data.train_subset=2560",
         "--config.prune.schedule=oneshot", "--config.prune.levels=10",
         "--config.prune.only_levels=10", "--config.lottery.variants=lt",
         "--config.lottery.rewind=1ep", "--config.log.progress=lines"],
        capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    info = export.export_ticket(workdir, "level_10_lt", tmp_path / "t.npz")
    check = export.agreement(workdir, "level_10_lt", tmp_path / "t.npz")
    assert check["examples"] == 10000 and check["argmax_differ"] == 0
    assert check["max_abs_logit_diff"] < 1e-4 * check["max_abs_logit"]
    assert info["file_bytes"] < 0.25 * info["dense_snapshot_bytes"]


@pytest.mark.skipif(not CIFAR10_DIR.is_dir(), reason=f"no real CIFAR-10 at {CIFAR10_DIR}")
def test_the_committed_full_length_ticket_exports_to_its_rows_accuracy(tmp_path, monkeypatch,
                                                                      capsys):
    """The 182-epoch study's weight-rewinding ticket at density 0.1074 (committed under
    docs/results/full_length/), exported: on all 10,000 real test images it predicts what the
    masked network does and scores the accuracy of the study's row."""
    monkeypatch.chdir(REPO)  # the study's config names its data relative to the repository
    study = "docs/results/full_length/resnet20_renda_seed0"
    out = tmp_path / "ticket.npz"
    assert export.main([study, "--ticket", "level_10_weight_rewind", "--out", str(out),
                        "--check"]) == 0
    printed = capsys.readouterr().out
    assert "10000 images, 0 predictions differ" in printed
    row = next(r for r in results.read_rows(f"{study}/results.jsonl")
               if (r["level"], r["variant"]) == (10, "weight_rewind"))
    figure = f"{100 * row['test_accuracy']:.2f} %"
    assert f"its test accuracy {figure} (the study's row: {figure})" in printed, printed
    assert out.stat().st_size < 0.2e6
