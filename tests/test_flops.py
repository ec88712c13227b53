"""Training-FLOP accounting (models.flops): per-layer counts from the model's own shapes, the
dense-equivalent and sparse totals of a run, and the two columns every results row carries."""

import json
import shutil

import pytest

from lottery_kd.models import flops as flops_lib, get_model
from lottery_kd.sparsity.dynamic import MaskUpdate
from lottery_kd.study import lottery
from tests.conftest import make_tiny_config


def _resnet20_by_hand() -> int:
    """ResNet-20 (shortcut option B) forward FLOPs per 32x32 image, layer by layer."""
    def conv(k, cin, cout, size):
        return 2 * k * k * cin * cout * size * size
    total = conv(3, 3, 16, 32) + 6 * conv(3, 16, 16, 32)
    total += conv(3, 16, 32, 16) + 5 * conv(3, 32, 32, 16) + conv(1, 16, 32, 16)
    total += conv(3, 32, 64, 8) + 5 * conv(3, 64, 64, 8) + conv(1, 32, 64, 8)
    return total + 2 * 64 * 10


def test_resnet20_layer_flops_add_up_to_the_count_by_hand():
    flops = flops_lib.layer_flops(get_model("resnet20", 10), (32, 32, 3))
    assert len(flops) == 22  # 19 3x3 convolutions, 2 shortcuts, fc
    assert sum(flops.values()) == _resnet20_by_hand()  # 81.3 MFLOPs: ~40.6M multiply-adds
    assert flops["stage1_block1/conv1/kernel"] == 2 * 9 * 16 * 16 * 32 * 32


def test_a_basis_model_counts_its_pixel_space_layers():
    plain = flops_lib.layer_flops(get_model("resnet20", 10), (32, 32, 3))
    assert flops_lib.layer_flops(get_model("resnet20", 10, basis="dct"), (32, 32, 3)) == plain


def test_sparse_count_follows_each_layers_density_and_kd_adds_a_dense_teacher():
    flops = {"a/kernel": 100, "b/kernel": 50}
    counts = {"a/kernel": [10, 100]}  # b is outside the pruning scope: dense
    base = flops_lib.train_flops(flops, counts, steps=4, batch_size=2)
    assert base == {"dense": 4 * 2 * 3 * 150, "sparse": 4 * 2 * 3 * (10 + 50)}
    kd = flops_lib.train_flops(flops, counts, steps=4, batch_size=2, teacher_steps=3)
    assert kd["dense"] - base["dense"] == kd["sparse"] - base["sparse"] == 3 * 2 * 150
    rigl = flops_lib.train_flops(flops, counts, steps=4, batch_size=2, dense_grad_steps=2)
    assert rigl["sparse"] - base["sparse"] == 2 * 2 * (150 - 60)
    assert flops_lib.train_flops(flops, counts, steps=4, batch_size=2, basis=True)["sparse"] == \
        base["dense"]


def test_rigl_update_steps_are_the_steps_mask_update_calls_due():
    update = MaskUpdate("rigl", delta_t=7, alpha=0.3, end_step=60)
    for start, steps in ((0, 100), (13, 30), (70, 10)):
        expected = sum(update.due(s) for s in range(start, start + steps))
        assert flops_lib.rigl_update_steps(start, steps, 7, 60) == expected
    assert flops_lib.steps_below(10, 20, 15) == 5 and flops_lib.steps_below(10, 20, None) == 20
    assert flops_lib.steps_below(10, 20, 5) == 0


def _tiny_study(workdir, kd_stop: bool):
    config = make_tiny_config()
    config.prune.levels = 1
    config.lottery.variants = "lt,kd"
    if kd_stop:
        config.kd.stop_epoch = 1
    lottery.run(config, workdir, log=lambda *_: None)
    return config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("flops_study")
    return workdir, _tiny_study(workdir, kd_stop=False)


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kd_stop", [False, True])
def test_every_row_of_a_study_records_its_training_flops(study, tmp_path, kd_stop):
    workdir, config = study
    if kd_stop:
        workdir, config = tmp_path, _tiny_study(tmp_path, kd_stop=True)
    dense, lt, kd = _rows(workdir)
    layers = flops_lib.layer_flops(get_model("digits_convnet", 10), (8, 8, 1))
    per_example = sum(layers.values())
    examples = dense["steps"] * config.train.batch_size
    assert dense["train_flops_dense"] == dense["train_flops_sparse"] == 3 * per_example * examples
    assert lt["train_flops_dense"] == dense["train_flops_dense"]
    kept = sum(f * (lt["layer_counts"][n][0] / lt["layer_counts"][n][1]
                    if n in lt["layer_counts"] else 1.0) for n, f in layers.items())
    assert kept < 0.9 * per_example  # 20 % of the conv weights pruned; fc stays dense
    assert lt["train_flops_sparse"] == pytest.approx(3 * kept * examples, rel=1e-12)
    teacher_steps = kd["steps"] if not kd_stop else kd["steps"] // config.train.epochs
    assert kd["train_flops_dense"] - lt["train_flops_dense"] == \
        teacher_steps * config.train.batch_size * per_example


def test_the_report_counts_the_flops_of_rows_from_before_and_plots_accuracy_against_them(
        study, tmp_path):
    from lottery_kd.analysis import report
    workdir = study[0]
    old = tmp_path / "old"
    shutil.copytree(workdir, old)
    rows = _rows(workdir)
    (old / "results.jsonl").write_text("".join(  # as a study before the FLOP columns wrote them
        json.dumps({k: v for k, v in row.items() if not k.startswith("train_flops")}) + "\n"
        for row in rows))
    for run in (workdir, old):
        summary = report.write_report([run], tmp_path / f"report_{run.name}", overlap=False)
        entries = {e["variant"]: e for e in summary["groups"][0]["entries"]}
        for row in rows:
            assert entries[row["variant"]]["train_flops_sparse"] == row["train_flops_sparse"]
            assert entries[row["variant"]]["train_flops_dense"] == row["train_flops_dense"]
        png = tmp_path / f"report_{run.name}" / "accuracy_vs_flops_1_digits_convnet_digits.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
        assert png.name in (tmp_path / f"report_{run.name}" / "report.md").read_text()
