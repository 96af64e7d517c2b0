"""Shuffling: valid, reproducible, new every epoch, resumable; none for a full batch.

On the GPU the order sorts the distinct keys of ``permutation_keys`` (one
64-bit key per epoch from the trainer's host generator), so no device
generator exists and the host generator's saved state resumes the order.
"""

import numpy as np
import pytest

from gpubackprop.backends.base import permutation_keys
from gpubackprop.nn.model import mlp
from gpubackprop.training.trainer import Trainer


def _draw(backend, n, rng):
    return backend.to_numpy(backend.permutation(n, rng))


def test_a_permutation_is_valid_reproducible_and_new_each_draw(backend):
    rng = np.random.default_rng(3)
    first, second = _draw(backend, 1000, rng), _draw(backend, 1000, rng)
    for order in (first, second):
        np.testing.assert_array_equal(np.sort(order), np.arange(1000))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(_draw(backend, 1000, np.random.default_rng(3)), first)
    assert not np.array_equal(_draw(backend, 1000, np.random.default_rng(4)), first)


def test_permutation_keys_never_tie_and_do_not_depend_on_the_array_library(emulated_gpu):
    keys = permutation_keys(np, 60_000, 2 ** 64 - 5)
    assert keys.dtype == np.uint64 and np.unique(keys).size == 60_000
    on_device = permutation_keys(emulated_gpu.xp, 60_000, 2 ** 64 - 5)
    np.testing.assert_array_equal(emulated_gpu.to_numpy(on_device), keys)
    assert not np.array_equal(permutation_keys(np, 50, 1), permutation_keys(np, 50, 2))


def test_the_gpu_order_sorts_the_keys_of_one_host_draw(emulated_gpu):
    key = int(np.random.default_rng(7).integers(2 ** 64, dtype=np.uint64))
    np.testing.assert_array_equal(_draw(emulated_gpu, 500, np.random.default_rng(7)),
                                  np.argsort(permutation_keys(np, 500, key)))


def _recording_trainer(backend, monkeypatch, batch_size, seed=0):
    """A Trainer whose backend records every permutation it draws, in ``drawn``."""
    trainer = Trainer(mlp(4, [5], 3, device=backend, seed=0), batch_size=batch_size, seed=seed,
                      verbose=0)
    drawn, backend = [], trainer.backend
    permutation = type(backend).permutation  # the class's, not another recorder's

    def recorded(n, rng):
        order = permutation(backend, n, rng)
        drawn.append(backend.to_numpy(order))
        return order

    monkeypatch.setattr(backend, "permutation", recorded)
    return trainer, drawn


def _data(n=40):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 3, size=n)


@pytest.mark.parametrize("batch_size", [None, 40, 64])
def test_no_permutation_is_drawn_when_one_batch_holds_the_whole_set(backend, monkeypatch,
                                                                     batch_size):
    trainer, drawn = _recording_trainer(backend, monkeypatch, batch_size)
    state = trainer.rng.bit_generator.state
    trainer.fit(*_data(40), epochs=3)
    assert drawn == [] and trainer.rng.bit_generator.state == state


def test_one_new_permutation_per_epoch_of_mini_batches(backend, monkeypatch):
    trainer, drawn = _recording_trainer(backend, monkeypatch, batch_size=16)
    trainer.fit(*_data(40), epochs=3)
    assert len(drawn) == 3
    assert all(not np.array_equal(a, b) for a, b in [(drawn[0], drawn[1]),
                                                      (drawn[1], drawn[2])])


def test_the_gpu_order_resumes_from_the_host_generator_and_needs_no_device_generator(
        emulated_gpu, monkeypatch):
    generators = emulated_gpu.xp.random.RandomState
    created = generators.created
    whole, drawn_whole = _recording_trainer(emulated_gpu, monkeypatch, 16, seed=9)
    whole.fit(*_data(40), epochs=4)
    part, _ = _recording_trainer(emulated_gpu, monkeypatch, 16, seed=9)
    part.fit(*_data(40), epochs=2)
    # A resumed run restores the host generator's state (checkpoints save it).
    resumed, drawn_resumed = _recording_trainer(emulated_gpu, monkeypatch, 16, seed=123)
    resumed.rng.bit_generator.state = part.rng.bit_generator.state
    resumed.fit(*_data(40), epochs=2)
    assert len(drawn_whole) == 4
    for expected, actual in zip(drawn_whole[2:], drawn_resumed):
        np.testing.assert_array_equal(actual, expected)
    assert generators.created == created, "no cuRAND generator may be created per epoch"
