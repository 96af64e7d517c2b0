"""The whole-step parallel MLP path of the fused CPU backend against the NumPy layer path."""

from pathlib import Path

import numpy as np
import pytest

from gpubackprop.nn.activations import NAMES as ACTIVATION_NAMES
from gpubackprop.nn.losses import get_loss
from gpubackprop.nn.model import Sequential, mlp
from gpubackprop.nn.optim import get_optimizer

pytestmark = pytest.mark.numba

TOLERANCE = {"float64": 1e-11, "float32": 2e-5}


@pytest.fixture
def parallel():
    from gpubackprop.backends.numba import parallel as cpu_parallel
    return cpu_parallel


def whole_step(parallel, model, optimizer, batch_size, parts=None, loss="cross_entropy"):
    """The parallel step compiled from ``model``'s plan (failing the test on a decline)."""
    step = parallel.WholeStepCompiler(parts).compile(model.plan(loss, optimizer, batch_size))
    assert isinstance(step, parallel.ParallelMLPStep), step
    return step


def reference_steps(model, optimizer, X, T, y, batches):
    """Layer-by-layer steps on the NumPy backend: (losses, hits) per batch."""
    loss = get_loss("cross_entropy")
    results = []
    for index in batches:
        Y = model.forward(X[index])
        value, dY = loss(model.backend, Y, T[index])
        model.backward(dY)
        optimizer.step(model)
        results.append((float(value), int((Y.argmax(axis=1) == y[index]).sum())))
    return results


def assert_close(reference, fused, dtype, what):
    for name, expected in reference.items():
        got = fused[name]
        scale = np.abs(expected).max() + 1e-30
        error = np.abs(got - expected).max() / scale
        assert error < TOLERANCE[dtype], f"{what} {name}: relative error {error:.1e}"


def assert_whole_step_matches(parallel, rng, widths, activation, dtype, optimizer, lr, rows,
                              batches, parts, seed):
    """Train an MLP of ``widths`` (inputs, hidden..., classes) on ``rows`` random samples in
    ``batches`` near-equal batches with the whole step split into ``parts``, and the same
    model on the NumPy layer path: hits equal; losses, gradients, parameters and
    optimizer state within :data:`TOLERANCE`."""
    n_in, *hidden, classes = widths
    X = rng.standard_normal((rows, n_in)).astype(dtype)
    y = rng.integers(0, classes, size=rows)
    T = np.eye(classes, dtype=dtype)[y]
    options = dict(activation=activation, dtype=dtype, seed=seed)
    reference, fused = mlp(n_in, hidden, classes, device="numpy", **options), \
        mlp(n_in, hidden, classes, device="numba", **options)
    opt_reference, opt_fused = get_optimizer(optimizer, lr=lr), get_optimizer(optimizer, lr=lr)
    split = np.array_split(rng.permutation(rows), batches)
    expected = reference_steps(reference, opt_reference, X, T, y, split)
    with whole_step(parallel, fused, opt_fused, len(split[0]), parts) as step:
        got = [step(X, T, y, index) for index in split]
    assert [hits for _, hits in got] == [hits for _, hits in expected]
    np.testing.assert_allclose([loss for loss, _ in got], [loss for loss, _ in expected],
                               rtol=TOLERANCE[dtype])
    assert opt_fused.step_count == batches
    assert_close(reference.gradients(), fused.gradients(), dtype, "gradient")
    assert_close(reference.parameters(), fused.parameters(), dtype, "parameter")
    assert_close(dict(opt_reference.state), dict(opt_fused.state), dtype, "optimizer state")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw", "rmsprop"])
@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("numpy_blas", [True, False], ids=["numpy-blas", "np.dot"])
def test_steps_match_the_numpy_layer_path(monkeypatch, parallel, rng, dtype, activation, optimizer,
                                          parts, numpy_blas):
    if numpy_blas and not parallel.NUMPY_BLAS:
        pytest.skip("NumPy's BLAS was not found; the step uses np.dot")
    monkeypatch.setattr(parallel, "NUMPY_BLAS", numpy_blas)
    # Widths 13, 7, 2, 4: with 3 parts the 2-wide layer leaves one thread no rows; batches
    # of 17, 17 and 16 rows: the buffers are reused for a shorter batch.
    assert_whole_step_matches(parallel, rng, (13, 7, 2, 4), activation, dtype, optimizer, 0.05,
                              rows=50, batches=3, parts=parts, seed=3)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation", ["relu", "silu", "tanh"])
@pytest.mark.parametrize("parts", [2, 3])
def test_wide_layers_whose_row_loops_run_vectorised_match(parallel, rng, dtype, activation,
                                                          parts):
    """Widths 67 and 35 split into parts of 22-34 columns: the row loops of the layer
    inputs, activation gradients and column sums run their SIMD bodies and a remainder
    (the narrow layers above run only remainders); silu recomputes Z for f'."""
    assert_whole_step_matches(parallel, rng, (29, 67, 35, 5), activation, dtype, "adam", 0.01,
                              rows=40, batches=2, parts=parts, seed=4)


def test_a_slice_index_and_soft_targets_without_labels(parallel, rng):
    X = rng.standard_normal((20, 5))
    T = rng.dirichlet(np.ones(3), size=20)
    reference, fused = mlp(5, [6], 3, device="numpy", dtype="float64", seed=0), \
        mlp(5, [6], 3, device="numba", dtype="float64", seed=0)
    opt_reference, opt_fused = get_optimizer("adam"), get_optimizer("adam")
    expected = reference_steps(reference, opt_reference, X, T, np.zeros(20, int),
                               [slice(0, 10), slice(10, 20)])
    with whole_step(parallel, fused, opt_fused, 10, parts=2) as step:
        got = [step(X, T, None, index) for index in (slice(0, 10), slice(10, 20))]
    np.testing.assert_allclose([loss for loss, _ in got], [loss for loss, _ in expected],
                               rtol=1e-12)
    assert [hits for _, hits in got] == [0, 0]
    assert_close(reference.parameters(), fused.parameters(), "float64", "parameter")


def test_a_batch_larger_than_the_buffers_is_refused(parallel, rng):
    from gpubackprop.errors import InputError

    X, T = rng.standard_normal((20, 4)), np.eye(2)[rng.integers(0, 2, size=20)]
    model = mlp(4, [3], 2, device="numba", dtype="float64", seed=0)
    with whole_step(parallel, model, get_optimizer("sgd"), 8) as step:
        with pytest.raises(InputError, match="a batch of 9 rows; this step was built for 1 to 8"):
            step(X, T, None, np.arange(9))


def blas_threads():
    """Thread counts of the BLAS libraries loaded in this process."""
    from threadpoolctl import threadpool_info

    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def test_blas_runs_single_threaded_inside_and_as_before_after(parallel, rng):
    before = blas_threads()
    model = mlp(4, [3], 2, device="numba", seed=0)
    with whole_step(parallel, model, get_optimizer("sgd"), 8):
        assert blas_threads() and set(blas_threads()) == {1}
    assert blas_threads() == before


def test_validation_between_epochs_keeps_blas_single_threaded(monkeypatch, parallel, rng):
    """The validation pass runs in the step's context, so no BLAS thread it wakes spins on
    into the next epoch beside the step's own threads."""
    from gpubackprop.training.trainer import Trainer

    def numpy_blas_threads():
        # NumPy's own BLAS, the one the validation's products run on (Numba may load another
        # while the step compiles, after the step's limit was set).
        from threadpoolctl import threadpool_info

        folder = Path(np.__file__).parent
        return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"
                and Path(info["filepath"]).is_relative_to(folder.parent)
                and Path(info["filepath"]).parent.name in ("numpy.libs", ".dylibs")}

    seen = []
    evaluate = Trainer._evaluate_on_device
    monkeypatch.setattr(Trainer, "_evaluate_on_device",
                        lambda self, data: (seen.append(numpy_blas_threads()),
                                            evaluate(self, data))[1])
    X = rng.standard_normal((64, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=64)
    before = numpy_blas_threads()
    trainer = Trainer(mlp(6, [8], 3, device="numba", seed=0), batch_size=16, verbose=0)
    history = trainer.fit(X, y, epochs=2, validation_data=(X[:20], y[:20]))
    assert trainer.step.compiler == parallel.WholeStepCompiler.name
    assert seen == [{1}, {1}] and len(history.val_accuracy) == 2
    assert numpy_blas_threads() == before


def test_the_trainer_takes_the_parallel_step_only_where_it_serves(monkeypatch, parallel, rng):
    from gpubackprop.nn.layers import Linear, ReLU
    from gpubackprop.training.trainer import Trainer

    calls = []
    original = parallel.train_step
    monkeypatch.setattr(parallel, "train_step", lambda *a: calls.append(1) or original(*a))
    X, y = rng.normal(size=(96, 6)), rng.integers(0, 3, size=96)
    trainer = Trainer(mlp(6, [8], 3, device="numba", seed=0), batch_size=32, verbose=0)
    trainer.fit(X, y)
    assert len(calls) == 3
    assert trainer.step.compiler == "numba-whole-step" and trainer.step.declined == ()
    separate_relu = Sequential([Linear(8), ReLU(), Linear(3)], n_inputs=6, device="numba")
    fortran_weights = mlp(6, [8], 3, device="numba")
    fortran_weights.layers[0].params["W"] = np.asfortranarray(fortran_weights.layers[0].params["W"])
    declined = {
        "parameter 0.W, its gradient or its state is not C-contiguous":
            Trainer(fortran_weights, verbose=0),
        "gradient clipping needs every gradient before any step":
            Trainer(mlp(6, [8], 3, device="numba"), clip_norm=1.0, verbose=0),
        "the loss is mse, not cross_entropy":
            Trainer(mlp(6, [8], 3, device="numba"), loss="mse", verbose=0),
        "layer 1 is a ReLU, not Linear": Trainer(separate_relu, verbose=0),
        "the output layer has an activation (cross-entropy takes logits)":
            Trainer(mlp(6, [8], 3, device="numba", output_activation="sigmoid"), verbose=0)}
    for why, trainer in declined.items():
        calls.clear()
        trainer.fit(X, y)
        assert calls == [], why
        assert trainer.step.compiler == "eager"
        assert trainer.step.declined == (("numba-whole-step", why),)
    numpy_trainer = Trainer(mlp(6, [8], 3, device="numpy"), verbose=0)
    numpy_trainer.fit(X, y)
    assert numpy_trainer.step.compiler == "eager" and numpy_trainer.step.declined == ()


def test_training_matches_the_numpy_backend_over_epochs(rng):
    from gpubackprop.training.trainer import Trainer

    X = rng.standard_normal((300, 10))
    y = (X[:, :3].sum(axis=1) > 0).astype(int) + (X[:, 3] > 1)
    histories = {}
    for device in ("numpy", "numba"):
        model = mlp(10, [16, 8], 3, device=device, dtype="float64", seed=1)
        trainer = Trainer(model, optimizer="adam", lr=0.01, batch_size=32, seed=2, verbose=0)
        histories[device] = trainer.fit(X, y, epochs=10)
    np.testing.assert_allclose(histories["numba"].loss, histories["numpy"].loss, rtol=1e-10)
    assert histories["numba"].accuracy == histories["numpy"].accuracy
    assert histories["numba"].accuracy[-1] > 0.8


def test_a_diverging_model_still_stops_with_the_batch_named(rng):
    from gpubackprop.errors import TrainingDivergedError
    from gpubackprop.training.trainer import Trainer

    X = rng.standard_normal((64, 4)) * 1e3
    y = rng.integers(0, 2, size=64)
    trainer = Trainer(mlp(4, [8], 2, device="numba", seed=0), optimizer="sgd", lr=1e30,
                      batch_size=16, verbose=0)
    with pytest.raises(TrainingDivergedError, match="epoch 1, batch"):
        trainer.fit(X, y, epochs=3)


@pytest.mark.parametrize("name, settings", [
    ("momentum", {"nesterov": True, "weight_decay": 0.1}),
    ("momentum", {"convention": "sklearn", "nesterov": True}),
    ("adam", {"weight_decay": 0.1, "convention": "sklearn"}),
    ("rmsprop", {"centered": True, "weight_decay": 0.1}),
    ("rmsprop", {"momentum": 0.5}),
])
def test_settings_and_rate_changes_reach_the_fused_step(parallel, rng, name, settings):
    X = rng.standard_normal((48, 6))
    y = rng.integers(0, 3, size=48)
    T = np.eye(3)[y]
    reference, fused = (mlp(6, [5], 3, device=device, dtype="float64", seed=2)
                        for device in ("numpy", "numba"))
    opt_reference, opt_fused = (get_optimizer(name, lr=0.05, **settings) for _ in range(2))
    batches = np.array_split(np.arange(48), 4)
    with whole_step(parallel, fused, opt_fused, 12, parts=2) as step:
        for i, index in enumerate(batches):
            # A schedule's change between steps reaches the fused step's state.
            opt_reference.lr = opt_fused.lr = 0.05 / (i + 1)
            reference_steps(reference, opt_reference, X, T, y, [index])
            step(X, T, y, index)
    assert_close(reference.parameters(), fused.parameters(), "float64", "parameter")


def test_an_optimizer_the_step_cannot_hold_is_declined_with_the_reason(parallel, monkeypatch):
    from gpubackprop.nn import optim

    model = mlp(4, [3], 2, device="numba", seed=0)
    wide = get_optimizer("rmsprop", centered=True, momentum=0.9)
    step = model.compile_step("ce", wide, 8)
    assert step.compiler == "eager" and step.declined == (("numba-whole-step", (
        "the rmsprop optimizer uses 3 state slots per parameter (square_avg, momentum_buffer, "
        "grad_avg); this step holds 2")),)

    # A newly registered rule without a fused loop: declined, not a KeyError.
    rule = optim.UpdateRule("lion", len(optim.UPDATE_RULES), ("beta1",), slots=("m",))
    spec = optim.OptimizerSpec("lion", rule, 1e-4, (optim.Hyperparameter("beta1", 0.9),))
    lion = type("Lion", (optim.Optimizer,), {"spec": spec})
    monkeypatch.setitem(optim.OPTIMIZERS, "lion", lion)
    answer = parallel.WholeStepCompiler().compile(model.plan("ce", lion(), 8))
    assert answer.reason == "no fused loop for the lion update rule"


@pytest.mark.parametrize("forced", [1, 2])
def test_the_thread_count_the_chooser_picks_does_not_change_results(monkeypatch, rng, forced):
    """The step keeps its parts however many threads run them: bit-identical training."""
    from gpubackprop.cpu_threads import ThreadChooser
    from gpubackprop.training.trainer import Trainer

    X = rng.standard_normal((200, 10))
    y = (X[:, :3].sum(axis=1) > 0).astype(int)
    used, results = [], []
    threads = ThreadChooser.threads
    for policy in (lambda self: self.n, lambda self: forced):
        monkeypatch.setattr(ThreadChooser, "threads",
                            lambda self, _p=policy: used.append(_p(self)) or _p(self))
        model = mlp(10, [16], 3, device="numba", dtype="float32", seed=1)
        Trainer(model, optimizer="adam", lr=0.01, batch_size=64, seed=2, verbose=0).fit(
            X, y, epochs=3)
        results.append(model.state_arrays())
    monkeypatch.setattr(ThreadChooser, "threads", threads)
    if numba_threads() < 2:
        pytest.skip("one Numba thread: nothing to choose between")
    assert forced in used
    for name, W in results[0].items():
        np.testing.assert_array_equal(results[1][name], W)


def numba_threads():
    import numba

    return numba.get_num_threads()
