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


def test_cached_epoch_order_gives_the_pure_functions_batches():
    # InMemoryTrainInput draws each epoch's permutation once; its batches must be train_batch's
    # across epoch boundaries (6 steps per epoch here), on going back to an earlier epoch, with a
    # new batch size, and for a fresh instance that starts mid-epoch (a resumed run).
    from lottery_kd.data.inputs import InMemoryTrainInput

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (50, 32, 32, 3), dtype=np.uint8)
    labels = (np.arange(50) % 10).astype(np.int32)
    source = InMemoryTrainInput(images, labels, seed=5, augment=True)
    resumed = InMemoryTrainInput(images, labels, seed=5, augment=True)
    calls = [(source, 0, 8), (source, 5, 8), (source, 6, 8), (source, 13, 8), (source, 7, 8),
             (source, 7, 16), (source, 2, 16), (resumed, 13, 8), (resumed, 14, 8)]
    for input_, step, batch in calls:
        want = augment.train_batch(jnp.asarray(images), jnp.asarray(labels), jnp.uint32(5),
                                   jnp.int32(step), batch_size=batch, augment=True)
        got = input_.batch(step, batch)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_batch_order_is_pinned_across_commits():
    # A study resumes across commits: the batch at step s must never change. These hashes are
    # the order of the CIFAR-10 training split (50,000 images, batch 128, seed 0) since the
    # epoch-permutation cache (first step, last of epoch 0, first of epoch 1, the renda rewind
    # step, the first LR drop, the last step of 182 epochs).
    import hashlib

    pinned = {0: "2a1fd02b20cfe54b", 389: "576698dcf05a7098", 390: "a9b0c032da72a162",
              12870: "13530e471478fe27", 35490: "5fa8fdf66d38e5f6", 70979: "4fc511d1000d37a0"}
    for step, digest in pinned.items():
        index = np.asarray(augment.batch_indices(0, step, 50000, 128))
        assert hashlib.sha256(index.tobytes()).hexdigest()[:16] == digest, step
