"""TensorBoard events are readable by TensorBoard's own loader, without TensorFlow imported."""

import subprocess
import sys


def test_scalars_round_trip_through_tensorboards_reader(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lottery_kd.training.tensorboard import ScalarWriter

    writer = ScalarWriter(tmp_path)
    writer.scalars(10, {"train_loss": 0.5, "test_accuracy": 0.75, "distill": True, "note": "x"})
    writer.scalars(20, {"train_loss": 0.25})
    writer.close()
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert sorted(accumulator.Tags()["scalars"]) == ["test_accuracy", "train_loss"]
    losses = [(e.step, e.value) for e in accumulator.Scalars("train_loss")]
    assert losses == [(10, 0.5), (20, 0.25)]


def test_training_process_does_not_import_tensorflow(tmp_path):
    code = ("import sys; from lottery_kd.study import lottery; "
            "from lottery_kd.training import tensorboard; "
            f"tensorboard.ScalarWriter({str(tmp_path)!r}).scalars(1, {{'a': 1.0}}); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
