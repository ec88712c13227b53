"""The training batch at step s is a pure function of (seed, s); crops and flips are real."""

import jax
import jax.numpy as jnp
import numpy as np

from lottery_kd.data import augment


def test_each_epoch_is_a_permutation_and_epochs_differ():
    n, batch = 100, 10
    epoch0 = np.concatenate([np.asarray(augment.batch_indices(3, s, n, batch)) for s in range(10)])
    epoch1 = np.concatenate([np.asarray(augment.batch_indices(3, s, n, batch))
                             for s in range(10, 20)])
    assert sorted(epoch0) == list(range(n)) and sorted(epoch1) == list(range(n))
    assert not np.array_equal(epoch0, epoch1)
    other_seed = np.asarray(augment.batch_indices(4, 0, n, batch))
    assert not np.array_equal(other_seed, epoch0[:batch])


def test_partial_last_batch_is_dropped():
    # 25 examples, batch 10: 2 steps per epoch, step 2 starts epoch 1.
    first_of_epoch1 = np.asarray(augment.batch_indices(0, 2, 25, 10))
    assert len(first_of_epoch1) == 10 and len(set(first_of_epoch1)) == 10


def test_batch_is_a_pure_function_of_seed_and_step():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (50, 32, 32, 3)), jnp.uint8)
    labels = jnp.arange(50, dtype=jnp.int32) % 10
    call = lambda step: augment.train_batch(  # noqa: E731
        images, labels, jnp.uint32(7), jnp.int32(step), batch_size=8, augment=True)
    a, b, later = call(13), call(13), call(14)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].dtype == jnp.uint8  # normalised inside the train step
    assert not np.array_equal(a[0], later[0])


def test_crop_and_flip_take_shifted_and_mirrored_windows():
    image = jnp.arange(32 * 32 * 3, dtype=jnp.float32).reshape(1, 32, 32, 3) + 1
    images = jnp.repeat(image, 64, axis=0)
    out = np.asarray(augment.crop_and_flip(images, jax.random.key(0)))
    padded = np.pad(np.asarray(image[0]), ((4, 4), (4, 4), (0, 0)))
    flips = 0
    for crop in out:
        matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                   if np.array_equal(crop, (padded[dy:dy + 32, dx:dx + 32][:, ::-1] if f
                                            else padded[dy:dy + 32, dx:dx + 32]))]
        assert matches, "every output is a (possibly flipped) 32x32 window of the padded image"
        flips += matches[0][2]
    assert 10 < flips < 54  # about half flipped
    assert len({out[i].tobytes() for i in range(64)}) > 20  # offsets vary per image


def test_normalize_uses_per_channel_statistics():
    images = jnp.full((2, 4, 4, 3), 100, jnp.uint8)
    out = augment.normalize(images, (100.0, 50.0, 0.0), (1.0, 2.0, 4.0))
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 25.0, 25.0])
