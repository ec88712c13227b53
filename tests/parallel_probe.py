"""Run in a subprocess by tests/test_parallel.py: 20 train steps on N CPU devices, params saved.

    python -m tests.parallel_probe NUM_DEVICES BATCH_NORM OUT.npz
"""

import sys

import jax


def main(num_devices: int, batch_norm: str, out: str) -> None:
    jax.config.update("jax_num_cpu_devices", num_devices)
    import numpy as np

    from lottery_kd.sparsity import masks as masks_lib
    from lottery_kd.data import load_dataset
    from lottery_kd.data.inputs import InputData
    from lottery_kd.models import get_model
    from lottery_kd.training.steps import init_variables
    from lottery_kd.training.trainer import Trainer

    assert jax.device_count() == num_devices
    model = get_model("digits_convnet", 10)
    data = InputData.from_dataset(load_dataset("digits"), seed=0, eval_batch_size=360,
                                  device_count=num_devices)
    trainer = Trainer(model, data, batch_size=64, momentum=0.9, weight_decay=5e-4,
                      distillation=None, batch_norm=batch_norm)
    params, batch_stats = init_variables(model, jax.random.key(0), (8, 8, 1))
    masks = masks_lib.create(params)
    fit = trainer.fit(trainer.init_state(params, batch_stats, masks, 0), masks, num_steps=20,
                      schedule=lambda step: 0.05)
    leaves = jax.tree.leaves(jax.device_get((fit.state.params, fit.state.batch_stats)))
    np.savez(out, *leaves)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
