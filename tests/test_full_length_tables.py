"""docs/results/full_length.py: the full-length section's tables from a study's files."""

import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "results" / "full_length.py"


def _study(tmp_path: Path) -> Path:
    runs = [(0, "dense"), (10, "lt"), (10, "weight_rewind"), (10, "lr_rewind"), (10, "kd"),
            (10, "kd_rewind"), (8, "lt")]
    plan = {"steps_per_epoch": 390, "runs": [{"level": lv, "variant": v} for lv, v in runs]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    (tmp_path / "config.json").write_text(json.dumps({"prune": {"fraction": 0.2}}))
    done = {(0, "dense"): 0.9166, (10, "lt"): 0.87, (10, "weight_rewind"): 0.905,
            (10, "kd"): 0.91}
    rows = [{"level": lv, "variant": v, "sparsity": 1 - 0.8 ** lv, "test_accuracy": acc,
             "conv_impl": "auto" if lv == 0 else "sparse"} for (lv, v), acc in done.items()]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                            + "{damaged\n")
    times = [(0, "dense", 390, 120.0), (0, "dense", 780, 100.0), (0, "dense", 1170, 96.0),
             (0, "dense", 1400, 50.0),  # a stop mid-epoch
             (0, "dense", 1560, 130.0),  # the partial first epoch of the resumed start
             (0, "dense", 1950, 94.0), (10, "lt", 390, 99.0), (10, "lt", 780, 80.0),
             (10, "lt", 1170, 60.0)]
    (tmp_path / "epoch_times.jsonl").write_text("".join(
        json.dumps({"level": lv, "variant": v, "step": step,
                    "steps": 230 if seconds == 50.0 else (160 if step == 1560 else 390),
                    "seconds": seconds}) + "\n" for lv, v, step, seconds in times))
    (tmp_path / "environment.jsonl").write_text(json.dumps({"conv_impl": "sparse"}) + "\n")
    return tmp_path


def test_tables_pair_variants_with_rendas_numbers_and_time_the_epochs(tmp_path, capsys):
    runpy.run_path(str(SCRIPT), run_name="not_main")["main"]([str(_study(tmp_path))])
    captured = capsys.readouterr()
    out = captured.out
    assert "skipped 1 unreadable line(s) (line 5" in captured.err  # not a silent blank cell
    assert "Dense: 91.66 (Renda 91.71)" in out
    # L10 first (the study's order); the first run without a row is the running one
    assert ("| 0.1074 | 89.26 | 87.00 (86.67) | 90.50 (91.00) | running (91.01) | 91.00 "
            "| pending | not run |") in out
    assert "| 0.1678 | 83.22 | pending (88.56) | not run (91.62) |" in out
    assert out.index("| 0.1074 | 89.26") < out.index("| 0.1678 | 83.22")
    # kd − weight_rewind, kd − lt, then differences whose runs are missing stay empty
    assert "| 0.1074 | +0.50 | +4.00 |  |  | +3.50 |  |" in out
    # dense: the full epochs 120, 100, 96, 94 (the partial ones left out): median 98
    assert "| L0 dense | not recorded | 4 | 98.0 | 1.00x | auto |" in out
    assert "| L10 lt | not recorded | 3 | 80.0 | 1.23x | sparse |" in out


def test_a_directory_without_a_plan_is_refused_with_what_to_pass(tmp_path):
    with pytest.raises(SystemExit, match="has no plan.json"):
        runpy.run_path(str(SCRIPT), run_name="not_main")["main"]([str(tmp_path)])


def test_a_running_run_shows_the_path_its_resume_checkpoints_record(tmp_path, capsys):
    """The start record holds the config value ("sparse"); a run checkpointed before the
    shortcut routing resumes as sparse-xla-shortcuts, and the epoch table says so."""
    from tests.routing_helpers import write_fingerprint
    study = _study(tmp_path)
    with open(study / "epoch_times.jsonl", "a") as f:
        f.write(json.dumps({"level": 10, "variant": "lr_rewind", "step": 390, "steps": 390,
                            "seconds": 70.0}) + "\n")
    main = runpy.run_path(str(SCRIPT), run_name="not_main")["main"]
    main([str(study)])
    row = "| L10 lr_rewind | not recorded | 1 | 70.0 | 1.40x |"
    assert f"{row} sparse (running) |" in capsys.readouterr().out
    write_fingerprint(study / "checkpoints" / "resume" / "level_10_lr_rewind",
                      {"conv_impl": "sparse"}, step=390)
    main([str(study)])
    assert f"{row} sparse-xla-shortcuts (running) |" in capsys.readouterr().out


def test_kd_epochs_say_where_their_teacher_logits_came_from(tmp_path, capsys):
    """A KD run that reads the stored logits runs faster than the one that computed them: the
    epoch table names each one's source (epochs from before the record: in the step)."""
    study = _study(tmp_path)
    epochs = [(10, "kd", 390, 150.0, "computed"), (10, "kd", 780, 150.0, "computed"),
              (10, "kd_rewind", 390, 95.0, "read"), (10, "kd_rewind", 780, 97.0, "mixed"),
              (8, "kd", 390, 160.0, None)]
    with open(study / "epoch_times.jsonl", "a") as f:
        for level, variant, step, seconds, teacher in epochs:
            f.write(json.dumps({"level": level, "variant": variant, "step": step, "steps": 390,
                                "seconds": seconds, "distill": True,
                                **({"teacher": teacher} if teacher else {})}) + "\n")
    runpy.run_path(str(SCRIPT), run_name="not_main")["main"]([str(study)])
    out = capsys.readouterr().out
    assert ("| L10 kd | not recorded | 2 | 150.0 | 0.65x | sparse | computed and stored (2) |"
            in out)
    assert ("| L10 kd_rewind | not recorded | 2 | 96.0 | 1.02x | sparse (running) | read from "
            "the store (1), part read, part computed (1) |") in out
    assert ("| L8 kd | not recorded | 1 | 160.0 | 0.61x | sparse (running) | teacher in the "
            "step (1) |") in out
    assert "| L10 lt | not recorded | 3 | 80.0 | 1.23x | sparse |  |" in out  # not a KD run


def test_epochs_are_timed_per_cpu_and_compared_with_the_dense_run_on_the_same_one(tmp_path, capsys):
    """Two sittings on two CPUs that a VM names alike: each epoch belongs to the start before it
    (environment.jsonl's cpu_id), and a ticket is compared with the dense run's epochs on its
    own CPU only."""
    study = _study(tmp_path)
    zen1, zen3 = "family 23 model 1, avx2", "family 25 model 1, avx2"
    starts = [{"conv_impl": "sparse", "processor": "AMD EPYC", "cpu_id": zen1,
               "time": "2026-12-03T10:00:00+0000"},
              {"conv_impl": "sparse", "processor": "AMD EPYC", "cpu_id": zen3,
               "time": "2026-12-04T18:00:00+0000"},
              {"conv_impl": "sparse", "processor": "AMD EPYC", "cpu_id": "family 25 model 17, "
               "avx512", "time": "2026-12-05T08:00:00+0000"}]
    (study / "environment.jsonl").write_text("".join(json.dumps(s) + "\n" for s in starts))
    epochs = [(0, "dense", 240.0, "2026-12-03T11:00:00+0000"),
              (0, "dense", 120.0, "2026-12-04T18:10:00+0000"),
              (0, "dense", 124.0, "2026-12-04T18:12:00+0000"),
              (10, "reinit", 70.0, "2026-12-04T19:00:00+0000"),
              (10, "reinit", 71.0, "2026-12-04T19:01:00+0000"),
              (10, "reinit", 200.0, "2026-12-02T09:00:00+0000"),  # before any start
              (10, "reinit", 50.0, "2026-12-05T09:00:00+0000")]
    with open(study / "epoch_times.jsonl", "a") as f:
        for level, variant, seconds, when in epochs:
            f.write(json.dumps({"level": level, "variant": variant, "step": 390, "steps": 390,
                                "seconds": seconds, "time": when}) + "\n")
    runpy.run_path(str(SCRIPT), run_name="not_main")["main"]([str(study)])
    out = capsys.readouterr().out
    assert f"| L0 dense | {zen1} | 1 | 240.0 | 1.00x |" in out
    assert f"| L0 dense | {zen3} | 2 | 122.0 | 1.00x |" in out
    assert f"| L10 reinit | {zen3} | 2 | 70.5 | 1.73x | sparse (running) |" in out
    assert "| L10 reinit | not recorded | 1 | 200.0 | 0.49x |" in out  # against 98.0
    # a ticket on a CPU the dense run never trained on has nothing to compare with
    assert "| L10 reinit | family 25 model 17, avx512 | 1 | 50.0 | no dense epochs |" in out


def test_late_epochs_give_each_finished_runs_spread_and_the_paired_means(tmp_path, capsys):
    """The last LATE_EPOCHS evaluations of each finished run (an earlier epoch and a running
    run's scalars left out), their mean and range, and kd − weight_rewind on those means."""
    from lottery_kd.training.tensorboard import ScalarWriter
    study = _study(tmp_path)
    curves = {"lt": [0.1] + [0.86, 0.88] * 5, "weight_rewind": [0.90] * 10,
              "kd": [0.905, 0.915] * 5, "lr_rewind": [0.99] * 10}  # lr_rewind: no row yet
    for variant, accuracy in curves.items():
        writer = ScalarWriter(study / "tensorboard" / f"level_10_{variant}")
        for epoch, value in enumerate(accuracy, 1):
            writer.scalars(390 * epoch, {"epoch": epoch, "test_accuracy": value})
        writer.scalars(390 * len(accuracy) + 5, {"train_loss": 0.1})  # no evaluation
        writer.close()
    runpy.run_path(str(SCRIPT), run_name="not_main")["main"]([str(study)])
    out = capsys.readouterr().out
    assert "| L10 lt | 10 | 87.00 | 86.00 | 88.00 |" in out  # the first epoch's 10 % left out
    assert "| L10 weight_rewind | 10 | 90.00 | 90.00 | 90.00 |" in out
    assert "| L10 kd | 10 | 91.00 | 90.50 | 91.50 |" in out
    assert "L10 lr_rewind | 10" not in out
    late = out[out.index("last 10 epochs"):]
    assert "| 0.1074 | +1.00 | +4.00 |  |  | +3.00 |  |" in late


def test_wall_times_come_from_the_rows_seconds(tmp_path, capsys):
    """The fifth table: each finished row's epochs and seconds (a row without them, written
    before those fields existed, is left out rather than printed as a guess)."""
    study = _study(tmp_path)
    rows = [json.loads(line) for line in (study / "results.jsonl").read_text().splitlines()[:4]]
    rows[1].update(epochs=182.0, seconds=11987.42)
    rows[2].update(epochs=149.0, seconds=9551.85)
    (study / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runpy.run_path(str(SCRIPT), run_name="not_main")["main"]([str(study)])
    out = capsys.readouterr().out.split("Wall time of each finished run")[1]
    assert "| L10 lt | 182 | 11,987 | 3.3 |" in out
    assert "| L10 weight_rewind | 149 | 9,552 | 2.7 |" in out
    assert "| L0 dense |" not in out and "| L10 kd |" not in out


def test_each_densitys_mask_is_listed_per_layer_in_network_order(tmp_path, capsys):
    """The sixth table: every pruned layer (network order, whatever order the row stores them
    in), its size, and the share and count each density's mask keeps; levels in training order."""
    study = _study(tmp_path)
    rows = [json.loads(line) for line in (study / "results.jsonl").read_text().splitlines()[:4]]
    rows[1]["layer_counts"] = {"stage3_block3/conv2/kernel": [236, 36864],
                               "stem_conv/kernel": [264, 432]}
    rows.append({"level": 8, "variant": "lt", "sparsity": 1 - 0.8 ** 8, "test_accuracy": 0.88,
                 "layer_counts": {"stem_conv/kernel": [300, 432],
                                  "stage3_block3/conv2/kernel": [1200, 36864]}})
    (study / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runpy.run_path(str(SCRIPT), run_name="not_main")["main"]([str(study)])
    out = capsys.readouterr().out.split("Weights each density's mask keeps")[1].splitlines()
    assert out[1] == "| layer | weights | 0.1074 | 0.1678 |"  # the plan trains level 10 first
    assert out[3] == "| stem_conv | 432 | 61.1 (264) | 69.4 (300) |"
    assert out[4] == "| stage3_block3/conv2 | 36,864 | 0.6 (236) | 3.3 (1,200) |"
