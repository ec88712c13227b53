"""The README's extension examples run as written and plug into the pipeline."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_kd.study import lottery, variants

from lottery_kd.sparsity import masks as masks_lib, pruning
from tests.conftest import make_tiny_config

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks_after(heading: str) -> str:
    text = README.read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.S))


def test_readme_masking_function_example_registers_and_prunes_exactly():
    code = _python_blocks_after("## Add your own masking function")
    if "magnitude_squared_plus_noise" not in pruning.names():
        exec(compile(code, str(README), "exec"), {})
    fn = pruning.get("magnitude_squared_plus_noise")
    params = {"conv": {"kernel": jnp.arange(-50.0, 50.0).reshape(2, 2, 5, 5)},
              "fc": {"kernel": jnp.ones((5, 3)), "bias": jnp.ones(3)}}
    masks = masks_lib.create(params)
    new = fn(params, masks, 0.2, rng=jax.random.key(1))
    kept = np.asarray(new["conv"]["kernel"]).reshape(-1)
    assert kept.sum() == 80  # ceil(0.2 * 100) removed
    removed_magnitudes = np.abs(np.arange(-50.0, 50.0))[~kept]
    assert removed_magnitudes.max() <= 10  # the smallest |w|^2
    assert np.all(np.asarray(new["fc"]["kernel"]))  # fc is out of the default scope
    params["conv"]["kernel"] = jnp.arange(-80.0, 80.0).reshape(2, 2, 5, 8)
    masks = masks_lib.create(params)
    blocks = fn(params, masks, 0.5, rng=jax.random.key(1), structure="block:4")
    pruning.check_result("magnitude_squared_plus_noise", blocks, masks, params, "conv", "block:4")
    rows = np.asarray(blocks["conv"]["kernel"]).reshape(-1, 4)
    assert set(rows.sum(axis=1)) == {0, 4} and rows.sum() == 80  # whole blocks, half of them


def test_readme_variant_example_runs_in_a_study(tmp_path):
    code = _python_blocks_after("## Add your own retrain variant")
    if "kd_finetune" not in variants.names():
        exec(compile(code, str(README), "exec"), {})
    config = make_tiny_config()
    config.prune.levels = 1
    config.lottery.variants = "finetune,kd_finetune,weight_rewind,halfway_rewind"
    config.prune.method = "magnitude_squared_plus_noise" \
        if "magnitude_squared_plus_noise" in pruning.names() else "magnitude_global"
    rows = lottery.run(config, tmp_path, log=lambda *_: None)
    by_variant = {r["variant"]: r for r in rows}
    assert by_variant["kd_finetune"]["distill"] and not by_variant["finetune"]["distill"]
    assert by_variant["kd_finetune"]["steps"] == by_variant["finetune"]["steps"]
    # the weight-source example: trains from the rewind step, from the midpoint weights
    halfway, rewound = by_variant["halfway_rewind"], by_variant["weight_rewind"]
    assert halfway["start_step"] == rewound["start_step"] > 0
    study = lottery.LotteryRun.from_workdir(tmp_path, log=lambda *_: None)
    context = variants.StartContext(level=1, variant="halfway_rewind", masks=None, seed=0,
                                    scope="conv", oneshot=False, load=study.load_snapshot,
                                    fresh=None)
    start = variants.weight_source("halfway_to_rewind")(context)
    init, rewind = study.load_snapshot("init"), study.load_snapshot("rewind")
    for mid, a, b in zip(jax.tree.leaves(start["params"]), jax.tree.leaves(init["params"]),
                         jax.tree.leaves(rewind["params"])):
        np.testing.assert_allclose(mid, (np.asarray(a) + np.asarray(b)) / 2, rtol=1e-6)
    assert halfway["test_accuracy"] != rewound["test_accuracy"] or \
        halfway["best_val_accuracy"] != rewound["best_val_accuracy"]


def test_readme_dynamic_method_example_trains_at_a_constant_count(tmp_path):
    from lottery_kd.sparsity import dynamic
    code = _python_blocks_after("## Add your own dynamic sparse method")
    if "grow_by_gradient_times_noise" not in dynamic.names():
        exec(compile(code, str(README), "exec"), {})
    config = make_tiny_config()
    config.dynamic.method = "grow_by_gradient_times_noise"
    config.dynamic.delta_t = 10
    config.dynamic.sparsity = 0.7
    rows = lottery.run(config, tmp_path, log=lambda *_: None)
    assert [r["variant"] for r in rows] == ["dense", "grow_by_gradient_times_noise"]
    run = lottery.LotteryRun(config, tmp_path, log=lambda *_: None)
    init = run.snapshots.restore("init", run.snapshot_template())
    final = run.snapshots.restore("level_1_grow_by_gradient_times_noise", run.snapshot_template())
    assert masks_lib.count(final["masks"])[0] == rows[1]["remaining_weights"]
    assert rows[1]["sparsity"] == np.float64(rows[1]["sparsity"])
    start = pruning.get("random")(init["params"], init["masks"], 0.7,
                                  rng=lottery.derived_key(config.seed, "dynamic", "masks"),
                                  distribution="erk")
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(final["masks"]),
                                                         jax.tree.leaves(start)))



def test_readme_dynamic_method_example_keeps_a_structure_and_one_without_is_refused(tmp_path):
    """The README's method passes prune.structure on: a block:16 run keeps whole blocks. A
    method with no `structure` parameter is refused by config validation, naming it, instead of
    a TypeError at its first mask update after the dense run."""
    from lottery_kd.config import validate
    from lottery_kd.config.errors import ConfigError
    from lottery_kd.sparsity import dynamic, structure
    if "grow_by_gradient_times_noise" not in dynamic.names():
        exec(compile(_python_blocks_after("## Add your own dynamic sparse method"),
                     str(README), "exec"), {})
    config = make_tiny_config()
    config.dynamic.method, config.dynamic.delta_t = "grow_by_gradient_times_noise", 10
    config.dynamic.sparsity, config.prune.structure = 0.5, "block:16"
    rows = lottery.run(config, tmp_path, log=lambda *_: None)
    run = lottery.LotteryRun(config, tmp_path, log=lambda *_: None)
    final = run.snapshots.restore("level_1_grow_by_gradient_times_noise", run.snapshot_template())
    shape = structure.parse("block:16")
    kernels = [m for m in jax.tree.leaves(final["masks"]) if shape.applies(np.shape(m))]
    assert kernels and all(structure.violations(shape, np.asarray(m)) == 0 for m in kernels)
    assert masks_lib.count(final["masks"])[0] == rows[1]["remaining_weights"]

    if "readme_no_structure" not in dynamic.names():
        @dynamic.register("readme_no_structure")
        def _no_structure(params, masks, grads, drop_fraction, *, rng=None, scope="conv"):
            return dynamic.drop_and_grow(params, masks, grads, drop_fraction, scope=scope)
    assert not dynamic.takes_structure("readme_no_structure")
    config.dynamic.method = "readme_no_structure"
    with pytest.raises(ConfigError, match="prune.structure.*readme_no_structure.*takes no"):
        validate(config)
    config.prune.structure = "unstructured"
    validate(config)

def test_readme_protocol_example_registers_and_an_experiment_switches_to_it():
    from experiments import cifar10_resnet20
    from lottery_kd.config import protocols, validate
    code = _python_blocks_after("## Add your own protocol")
    if "open_lth" not in protocols.names():
        exec(compile(code, str(README), "exec"), {})
    config = cifar10_resnet20.get_config("open_lth")
    assert (config.protocol, config.train.epochs, config.prune.scope) == \
        ("open_lth", 160, "conv_fc")
    validate(config)
    assert protocols.describe(config).endswith("every setting as published")
    # what `--config.protocol=open_lth --config.seed=3` on the command line resolves to
    from experiments.launch import resolve_protocol
    switched = resolve_protocol(cifar10_resnet20.get_config, cifar10_resnet20.get_config(),
                                {"protocol": "open_lth", "seed": 3})
    assert (switched.protocol, switched.train.epochs, switched.seed) == ("open_lth", 160, 3)
