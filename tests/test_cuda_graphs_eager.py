"""The eager interpreter's step (recurrent models) recorded as CUDA graphs and replayed,
against the same step unrecorded.

Runs on the emulated backend (the fake ``cupy`` records and replays graphs,
lets a capture allocate only from a private memory pool, and refuses during
capture what CUDA's capture forbids and CuPy's own cuBLAS calls; see
``tests/cuda_emulation/fake_cupy.py``) and, marked ``gpu``, on a real GPU.
Emulated, recorded training equals unrecorded training bit for bit; on a GPU
the recorded products are cuBLAS calls of our own (``cublas_capture``) in
both, so they agree to float32 rounding at worst.
"""

import numpy as np
import pytest

from gpubackprop import GRU, LSTM, Sequential, Trainer
from gpubackprop.backends.cupy.graphs import ALL, GRAPHS_ENV
from gpubackprop.nn.layers import Linear
from gpubackprop.nn.recurrent import RNN, TimeDistributed
from gpubackprop.training.callbacks import LearningRateSchedule
from gpubackprop.training.checkpoint import load_checkpoint, save_checkpoint

from graph_comparison import assert_same_losses, assert_same_training, recorded_then_unrecorded

#: Sequences of the training set: 3 batches of 32 and a last one of 4 (a second batch shape).
ROWS, BATCH, STEPS, FEATURES = 100, 32, 7, 3
DECLINED = "; cupy-device-step declined: layer 0 is a RNN, not Linear"


@pytest.fixture(autouse=True)
def graphs_switch_unset(monkeypatch):
    """The recorded eager step is the default: the switch unset, whatever the caller set."""
    monkeypatch.delenv(GRAPHS_ENV, raising=False)


def declined(step) -> str:
    """What :meth:`describe` adds after the eager step's own name: the device step's decline."""
    ((name, reason),) = step.declined
    assert name == "cupy-device-step"
    return f"; cupy-device-step declined: {reason}"


#: Models: many-to-one with truncated BPTT and a learnt h0 (cross-entropy); a many-to-many
#: RNN under a per-step Linear and a second RNN (the Trainer's targets are per sequence),
#: so the dX of an RNN and of TimeDistributed flow too (mse).
MODELS = {
    "many-to-one": (lambda: [RNN(8, "tanh", bptt_steps=3, h0="learn"), Linear(3)],
                    "cross_entropy"),
    "stacked": (lambda: [RNN(8, "sigmoid", return_sequences=True, bptt_steps=4),
                         TimeDistributed(Linear(5, "relu")), RNN(6), Linear(2)], "mse"),
    # Many-to-many: a class per time step, padded sequences masked (mask gathered per batch).
    "many-to-many": (lambda: [RNN(8, "tanh", return_sequences=True, bptt_steps=3),
                              TimeDistributed(Linear(3))], "per-step"),
    # Gated layers: a truncated LSTM with learnt initial states; a GRU stack many-to-many.
    "lstm": (lambda: [LSTM(6, bptt_steps=3, h0="learn"), Linear(3)], "cross_entropy"),
    "gru-many-to-many": (lambda: [GRU(6, return_sequences=True), LSTM(5, return_sequences=True),
                                  TimeDistributed(Linear(3))], "per-step"),
}


@pytest.fixture
def sequences(rng):
    X = rng.standard_normal((ROWS, STEPS, FEATURES)).astype(np.float32)
    labels = (X[:, -1, 0] - X[:, 2, 1] > 0).astype(np.int64) + (X[:, -2, 2] > 0.8)
    targets = X[:, :, :2].mean(axis=1) + X[:, 0, 1:] * X[:, -1, :2]
    per_step = (np.cumsum(X[:, :, 0], axis=1) > 0).astype(np.int64) + (X[:, :, 1] > 1)
    lengths = np.random.default_rng(3).integers(1, STEPS + 1, ROWS)
    mask = (np.arange(STEPS) < lengths[:, None]).astype(np.float32)
    return X, {"cross_entropy": labels, "mse": targets.astype(np.float32),
               "per-step": (per_step, mask)}


def train(backend, kind, sequences, tmp_path, optimizer, clip_norm):
    """Two epochs, a checkpoint, two more resumed from it; the LR cut every epoch;
    validation after each. Returns (model, figures, the steps of both fits)."""
    layers, targets_kind = MODELS[kind]
    X, targets = sequences
    y, mask = targets[targets_kind] if targets_kind == "per-step" else \
        (targets[targets_kind], None)
    loss = "mse" if targets_kind == "mse" else "cross_entropy"
    validation = (X[:40], y[:40]) + (() if mask is None else (mask[:40],))

    def fit(model, opt, seed, epochs):
        schedule = LearningRateSchedule("step", base_lr=0.02, epochs=epochs, step_size=1)
        trainer = Trainer(model, loss=loss, optimizer=opt, lr=0.02, batch_size=BATCH,
                          seed=seed, clip_norm=clip_norm, verbose=0, callbacks=[schedule])
        trainer.fit(X, y, epochs=epochs, validation_data=validation, mask=mask)
        return trainer

    model = Sequential(layers(), n_inputs=FEATURES, device=backend, seed=5)
    first = fit(model, optimizer, 1, 2)
    save_checkpoint(tmp_path, model, first.optimizer, first.history)
    loaded = load_checkpoint(tmp_path, device=backend)
    second = fit(loaded.model, loaded.optimizer, 2, 2)
    figures = [first.history.loss, second.history.loss, first.history.val_loss,
               second.history.val_loss, first.history.accuracy, second.history.accuracy]
    return loaded.model, np.concatenate(figures), (first.step, second.step)


@pytest.mark.parametrize("kind, optimizer, clip_norm", [
    ("many-to-one", "adam", 0.5), ("many-to-one", "momentum", None),
    ("stacked", "sgd", 1.0), ("stacked", "rmsprop", None), ("many-to-many", "adam", 1.0),
    ("lstm", "adam", 0.5), ("gru-many-to-many", "momentum", 1.0)])
def test_a_recorded_recurrent_model_trains_as_the_unrecorded_eager_step(
        monkeypatch, graph_backend, sequences, tmp_path, kind, optimizer, clip_norm):
    model, figures, steps = train(graph_backend, kind, sequences, tmp_path, optimizer,
                                  clip_norm)
    for step in steps:
        assert step.describe() == "eager (CUDA graph)" + declined(step)
        # One recording per batch shape (32 and 4 sequences), every other step replayed.
        assert step.calls == 8
        assert (step.graphs.captures, step.graphs.replays) == (2, step.calls - 2)
    monkeypatch.setattr(graph_backend, "cuda_graphs", False)
    plain_model, expected, plain_steps = train(graph_backend, kind, sequences,
                                               tmp_path / "unrecorded", optimizer, clip_norm)
    for step in plain_steps:
        assert step.graphs is None
        assert step.describe() == ("eager (no CUDA graph: turned off on the backend "
                                   "(cuda_graphs=False))" + declined(step))
    assert_same_training(graph_backend, (model, figures), (plain_model, expected))


def test_replays_read_new_batches_and_new_data(graph_backend, rng):
    """Replays read each call's rows (index arrays and slices) and, recorded again, new data
    at another address; every loss as the unrecorded step's."""
    def losses():
        model = Sequential([RNN(6), Linear(3)], n_inputs=FEATURES, device=graph_backend,
                           seed=0)
        step = model.compile_step("cross_entropy", "sgd", 10)
        seen, kept = [], []  # both data sets stay alive: two addresses
        for seed in (0, 1):
            draw = np.random.default_rng(seed)
            X = graph_backend.asarray(draw.standard_normal((20, STEPS, FEATURES))
                                      .astype(np.float32))
            T = graph_backend.asarray(np.eye(3, dtype=np.float32)[draw.integers(0, 3, 20)])
            order = graph_backend.asarray(draw.permutation(20))
            kept.append((X, T))
            for index in (slice(0, 10), order[:10], slice(10, 20), order[10:]):
                loss, _ = step(X, T, None, index)
                seen.append(float(loss))
        return np.array(seen), step

    (recorded, step), (unrecorded, _) = recorded_then_unrecorded(graph_backend, losses)
    assert (step.graphs.captures, step.graphs.replays) == (2, 6)
    assert len(set(recorded.tolist())) == 8
    assert_same_losses(graph_backend, recorded, unrecorded)


def host_reading_recurrent_forward(backend):
    """``recurrent_forward`` that also reads one value back to the host (a synchronisation)."""
    plain = backend.recurrent_forward

    def recurrent_forward(XW, U, b, States, name="tanh", zero_start=False):
        float(U[0, 0])
        return plain(XW, U, b, States, name, zero_start)
    return recurrent_forward


def cupy_products(backend):
    """``gemm`` through CuPy's own matmul, which refuses a capturing stream (cupy#6290)."""
    def gemm(A, B, trans_a=False, trans_b=False, out=None):
        return backend.xp.matmul(A.T if trans_a else A, B.T if trans_b else B, out=out)
    return gemm


@pytest.mark.parametrize("name, change, reason", [
    ("recurrent_forward", host_reading_recurrent_forward, "a read back to the host"),
    ("gemm", cupy_products, "cupy#6290")])
def test_a_step_that_cannot_be_recorded_runs_unrecorded_and_says_why(
        monkeypatch, emulated_gpu, sequences, tmp_path, name, change, reason):
    monkeypatch.setattr(emulated_gpu, name, change(emulated_gpu))
    model, figures, steps = train(emulated_gpu, "many-to-one", sequences, tmp_path, "adam",
                                  1.0)
    for step in steps:
        assert step.graphs is None and step.no_graph.startswith("recording the step failed")
        assert reason in step.no_graph
        # The reason names the package's call that met the refusal (the layer's time loop).
        assert " (at gpubackprop/nn/recurrent.py:" in step.no_graph
        assert step.describe() == f"eager (no CUDA graph: {step.no_graph})" + DECLINED
    monkeypatch.setattr(emulated_gpu, "cuda_graphs", False)
    plain = train(emulated_gpu, "many-to-one", sequences, tmp_path / "unrecorded", "adam", 1.0)
    assert_same_training(emulated_gpu, (model, figures), plain[:2])


def test_without_a_capture_gemm_the_eager_step_runs_unrecorded(monkeypatch, graph_backend):
    def refuse(xp):
        raise OSError("libcublas.so.13: cannot open shared object file")

    monkeypatch.setattr(graph_backend, "capture_gemm_loader", refuse)
    monkeypatch.setattr(graph_backend, "_capture_gemm", None)
    model = Sequential([RNN(4), Linear(2)], n_inputs=FEATURES, device=graph_backend, seed=0)
    step = model.compile_step("cross_entropy", "sgd", 8)
    assert step.graphs is None
    assert step.describe() == ("eager (no CUDA graph: no capture-safe GEMM (OSError: "
                               "libcublas.so.13: cannot open shared object file))" + DECLINED)


@pytest.mark.parametrize("value, reason", [
    ("0", f"turned off by {GRAPHS_ENV}=0"),
    ("maybe", f"{GRAPHS_ENV}='maybe' is neither 0, 1, all nor device")])
def test_the_environment_switch_turns_recording_off(monkeypatch, graph_backend, sequences,
                                                     value, reason):
    X, targets = sequences
    model = Sequential([RNN(4), Linear(3)], n_inputs=FEATURES, device=graph_backend, seed=0)
    monkeypatch.setenv(GRAPHS_ENV, value)
    trainer = Trainer(model, batch_size=BATCH, verbose=0)
    trainer.fit(X, targets["cross_entropy"], epochs=1)
    assert trainer.step.graphs is None and trainer.step.no_graph == reason
    assert trainer.step.describe() == f"eager (no CUDA graph: {reason})" + DECLINED
    monkeypatch.setenv(GRAPHS_ENV, "device")  # the MLP device step's graphs only
    trainer.fit(X, targets["cross_entropy"], epochs=1)
    assert trainer.step.graphs is None and trainer.step.no_graph == (
        f"{GRAPHS_ENV}=device records the MLP device step alone")
    for value in (ALL, "1"):
        monkeypatch.setenv(GRAPHS_ENV, value)
        trainer.fit(X, targets["cross_entropy"], epochs=1)
        assert trainer.step.describe() == "eager (CUDA graph)" + DECLINED


def test_replays_read_nothing_back_and_allocate_nothing(emulated_gpu, sequences):
    """Once recorded, a step copies its rows, launches its graph and copies its loss and hits
    into the ring: nothing read back to the host, nothing allocated."""
    from cuda_emulation.fake_cupy import DeviceArray

    X, targets = sequences
    model = Sequential([RNN(4), Linear(3)], n_inputs=FEATURES, device=emulated_gpu, seed=0)
    step = model.compile_step("cross_entropy", "adam", BATCH)
    X = emulated_gpu.asarray(X)
    labels = emulated_gpu.asarray(targets["cross_entropy"])
    T = emulated_gpu.one_hot(labels, 3, np.float32)
    step(X, T, labels, slice(0, BATCH))
    reads, allocations = DeviceArray.host_reads, DeviceArray.allocations
    results = [step(X, T, labels, slice(start, start + BATCH)) for start in (32, 64, 0)]
    assert (DeviceArray.host_reads, DeviceArray.allocations) == (reads, allocations)
    assert (step.graphs.captures, step.graphs.replays) == (1, 3)
    # Each result stays its own step's (a ring slot each), read after the three steps.
    losses = [float(loss) for loss, _ in results]
    assert len(set(losses)) == 3


def test_three_batch_shapes_replay_as_unrecorded_and_keep_dropped_buffers(graph_backend):
    """A layer keeps the buffers of two batch shapes: cycling three drops the first shape's,
    which its graph still writes; the step keeps them alive, and every loss is right."""
    def losses():
        model = Sequential([RNN(5, bptt_steps=2), Linear(3)], n_inputs=FEATURES,
                           device=graph_backend, seed=0)
        step = model.compile_step("cross_entropy", "momentum", 10)
        draw = np.random.default_rng(7)
        X = graph_backend.asarray(draw.standard_normal((30, STEPS, FEATURES)).astype(np.float32))
        T = graph_backend.asarray(np.eye(3, dtype=np.float32)[draw.integers(0, 3, 30)])
        seen = [float(step(X, T, None, slice(start, start + rows))[0])
                for _ in range(2) for start, rows in ((0, 10), (10, 9), (19, 8))]
        return np.array(seen), step, model

    (recorded, step, model), (unrecorded, _, _) = recorded_then_unrecorded(graph_backend,
                                                                           losses)
    assert_same_losses(graph_backend, recorded, unrecorded)
    assert (step.graphs.captures, step.graphs.replays) == (3, 3)
    assert len(step.recorded_buffers) == 3
    first_inputs = [A for A in step.recorded_buffers[0] if A.shape == (STEPS * 10, FEATURES)]
    held = model.layers[0].training_buffers()
    assert len(first_inputs) == 1 and not any(A is first_inputs[0] for A in held)


def test_a_data_parallel_step_is_not_recorded_and_sums_the_ranks(emulated_gpu, sequences):
    """Its all-reduce comes between backward and update: the step runs unrecorded, says so,
    and the other rank's gradients (stood in for by a constant) reach every update."""
    from gpubackprop.distributed import Communicator

    class OtherRankAddsOne(Communicator):
        name, rank, size = "stand-in", 0, 2

        def allreduce_sum(self, buffer) -> None:
            buffer += 1.0

        def allgather(self, value) -> list:
            return [value, value]

        def broadcast(self, value, root=0):
            return value

        def abort(self, code: int) -> None:
            raise AssertionError(f"aborted with {code}")

    X, targets = sequences
    weights = []
    for distributed in (None, OtherRankAddsOne()):
        model = Sequential([RNN(4), Linear(3)], n_inputs=FEATURES, device=emulated_gpu,
                           seed=0)
        trainer = Trainer(model, optimizer="sgd", batch_size=BATCH, verbose=0,
                          distributed=distributed)
        trainer.fit(X, targets["cross_entropy"], epochs=1)
        weights.append(model.state_arrays())
    assert trainer.step.graphs is None and trainer.step.no_graph.startswith("a data-parallel")
    assert trainer.step.describe().startswith(f"eager (no CUDA graph: {trainer.step.no_graph})")
    assert all(np.abs(weights[1][name] - W).min() > 1e-4 for name, W in weights[0].items())


def test_the_emulation_records_allocations_only_from_a_private_pool():
    """While capturing, nothing runs; an allocating operation is allowed only inside
    ``using_allocator(pool.malloc)`` and is replayed into the array it made then."""
    from cuda_emulation import fake_cupy

    cp = fake_cupy.make_module()
    A = cp.zeros((5,), np.float32)
    index = cp.asarray(np.array([0, 0, 3]))
    pool, stream = cp.cuda.MemoryPool(), cp.cuda.Stream(non_blocking=True)
    with stream, cp.cuda.using_allocator(pool.malloc):
        stream.begin_capture()
        np.add.at(A, index, 1.0)
        doubled = A * 2
        rows = doubled.reshape(5, 1)[::2].copy()
        largest = A.argmax()
        graph = stream.end_capture()
    assert not A.any() and pool.allocations == 3
    for launches in (1, 2):
        graph.launch()
        np.testing.assert_array_equal(A.get(), [2 * launches, 0, 0, launches, 0])
        np.testing.assert_array_equal(doubled.get(), 2 * A.get())
        np.testing.assert_array_equal(rows.get().ravel(), doubled.get()[::2])
        assert int(largest) == 0
    with stream:
        stream.begin_capture()
        with pytest.raises(fake_cupy.CaptureError, match="an allocation"):
            A * 2


def test_sequences_of_another_length_get_buffers_and_a_graph_of_their_own(graph_backend):
    """The same step on sequences of 7 then 4 time steps, batches of 10 rows each time."""
    def losses():
        model = Sequential([RNN(5), Linear(3)], n_inputs=FEATURES, device=graph_backend,
                           seed=0)
        step = model.compile_step("cross_entropy", "adam", 10)
        draw = np.random.default_rng(11)
        seen = []
        for steps in (STEPS, 4, STEPS):
            X = graph_backend.asarray(draw.standard_normal((20, steps, FEATURES))
                                      .astype(np.float32))
            T = graph_backend.asarray(np.eye(3, dtype=np.float32)[draw.integers(0, 3, 20)])
            seen += [float(step(X, T, None, slice(start, start + 10))[0]) for start in (0, 10)]
        return np.array(seen), step

    (recorded, step), (unrecorded, _) = recorded_then_unrecorded(graph_backend, losses)
    assert_same_losses(graph_backend, recorded, unrecorded)
    assert step.graphs.captures == 3 and len(step.batches) == 2
