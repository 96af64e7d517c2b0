"""Many-to-many training in the Trainer: per-step targets, masks, evaluation and prediction."""

import numpy as np
import pytest

from gpubackprop import Trainer
from gpubackprop.errors import InputError
from gpubackprop.nn.gated_recurrent import GRU, LSTM
from gpubackprop.nn.layers import Linear
from gpubackprop.nn.losses import MeanSquaredError
from gpubackprop.nn.model import Sequential
from gpubackprop.nn.recurrent import RNN, TimeDistributed

N, STEPS, D, H, K = 6, 5, 3, 4, 3


def sequence_model(backend, dtype="float64", seed=0, outputs=K, layer=RNN):
    """A recurrent layer over every step (an Elman RNN by default), then a Linear
    read-out at every step."""
    return Sequential([layer(H, return_sequences=True), TimeDistributed(Linear(outputs))],
                      n_inputs=D, device=backend, dtype=dtype, seed=seed)


def padded_mask(lengths, steps=STEPS) -> np.ndarray:
    """(N, T) bool: the first ``lengths[i]`` steps of sequence i count."""
    return np.arange(steps)[None, :] < np.asarray(lengths)[:, None]


def one_sgd_step(model, X, y, mask=None, loss="cross_entropy"):
    """Loss of one full-batch SGD step and the gradients it used (host float64)."""
    trainer = Trainer(model, loss=loss, optimizer="sgd", lr=1e-3, batch_size=None, verbose=0)
    history = trainer.fit(X, y, epochs=1, mask=mask)
    grads = {name: model.backend.to_numpy(dW).copy() for name, dW in model.gradients().items()}
    return history.loss[0], grads, trainer


def torch_reference(torch, params, X, T, mask, loss):
    """The same RNN + read-out written out in PyTorch; loss and gradients by autograd.

    Cross-entropy: ``F.cross_entropy`` with ``ignore_index`` at the masked steps.
    MSE: the squared error summed over the selected steps and divided by their
    number times K.
    """
    tensors = {name: torch.tensor(value, dtype=torch.float64, requires_grad=True)
               for name, value in params.items()}
    W, U, b, V, c = (tensors[name] for name in ("0.W", "0.U", "0.b", "1.W", "1.b"))
    inputs = torch.tensor(X, dtype=torch.float64)
    h = torch.zeros((X.shape[0], U.shape[0]), dtype=torch.float64)
    outputs = []
    for t in range(X.shape[1]):
        h = torch.tanh(inputs[:, t] @ W + h @ U + b)
        outputs.append(h @ V + c)
    Y = torch.stack(outputs, dim=1)
    keep = torch.tensor(np.ones(X.shape[:2], bool) if mask is None else mask)
    if loss == "cross_entropy":
        targets = torch.tensor(np.where(keep.numpy(), T, -100))
        value = torch.nn.functional.cross_entropy(Y.reshape(-1, Y.shape[-1]),
                                                  targets.reshape(-1), ignore_index=-100)
    else:
        squared = (Y - torch.tensor(T)) ** 2 * keep[..., None]
        value = squared.sum() / (keep.sum() * Y.shape[-1])
    value.backward()
    return value.item(), {name: tensor.grad.numpy() for name, tensor in tensors.items()}


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_loss_and_gradients_match_torch(backend, torch, rng, loss, masked):
    model = sequence_model(backend)
    X = rng.standard_normal((N, STEPS, D))
    y = rng.integers(0, K, (N, STEPS)) if loss == "cross_entropy" else \
        rng.standard_normal((N, STEPS, K))
    mask = padded_mask([5, 3, 1, 4, 5, 2]) if masked else None
    params = {name: W.copy() for name, W in model.state_arrays().items()}
    value, grads, _ = one_sgd_step(model, X, y, mask, loss)
    expected_value, expected_grads = torch_reference(torch, params, X, y, mask, loss)
    assert value == pytest.approx(expected_value, rel=1e-12)
    for name, expected in expected_grads.items():
        np.testing.assert_allclose(grads[name], expected, rtol=1e-10, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("layer", [RNN, LSTM, GRU], ids=lambda layer: layer.__name__)
def test_a_padded_step_changes_nothing(backend, rng, layer):
    """Targets and trailing inputs at masked steps leave loss, gradients and accuracy as
    they were, bit for bit: the masked rows' gradient is exactly zero."""
    X = rng.standard_normal((N, STEPS, D))
    y = rng.integers(0, K, (N, STEPS))
    mask = padded_mask([5, 3, 1, 4, 5, 2])
    X_other, y_other = X.copy(), y.copy()
    X_other[~mask] = rng.standard_normal(int((~mask).sum()) * D).reshape(-1, D) * 50
    y_other[~mask] = (y[~mask] + 1) % K
    runs = []
    for inputs, labels in ((X, y), (X_other, y_other)):
        value, grads, trainer = one_sgd_step(sequence_model(backend, layer=layer), inputs,
                                             labels, mask)
        runs.append((value, grads, trainer.history.accuracy[0],
                     trainer.evaluate(inputs, labels, mask=mask)))
    (value, grads, accuracy, scores), (value2, grads2, accuracy2, scores2) = runs
    assert value == value2 and accuracy == accuracy2 and scores == scores2
    for name in grads:
        np.testing.assert_array_equal(grads[name], grads2[name], err_msg=name)
    # The padding really was different: without the mask the gradients differ.
    _, unmasked, _ = one_sgd_step(sequence_model(backend, layer=layer), X, y)
    _, unmasked2, _ = one_sgd_step(sequence_model(backend, layer=layer), X_other, y_other)
    assert all(not np.array_equal(unmasked[name], unmasked2[name]) for name in unmasked
               if name.startswith("0."))


def test_masked_gradient_rows_are_exactly_zero(backend, rng):
    model = sequence_model(backend)
    Y = model.backend.asarray(rng.standard_normal((N, STEPS, K)))
    T = model.backend.asarray(np.eye(K)[rng.integers(0, K, (N, STEPS))])
    mask = padded_mask([5, 3, 1, 4, 5, 2])
    for loss in (Trainer(model, verbose=0).loss, MeanSquaredError()):
        _, dY = loss.masked(model.backend, Y, T, model.backend.asarray(mask.astype(float)))
        dY = model.backend.to_numpy(dY)
        assert np.all(dY[~mask] == 0) and np.all(np.abs(dY[mask]).sum(axis=-1) > 0)


def test_evaluate_and_predict_per_step(backend, rng):
    """Loss and accuracy are means over the unmasked steps, computed here independently
    from the model's probabilities (N, T, K) and predictions (N, T)."""
    model = sequence_model(backend)
    X = rng.standard_normal((N, STEPS, D))
    y = rng.integers(0, K, (N, STEPS))
    mask = padded_mask([5, 3, 1, 4, 5, 2])
    trainer = Trainer(model, batch_size=4, verbose=0)
    trainer.fit(X, y, epochs=3, mask=mask)
    P = trainer.predict_outputs(X)
    predicted = trainer.predict(X)
    assert P.shape == (N, STEPS, K) and predicted.shape == (N, STEPS)
    np.testing.assert_array_equal(predicted, P.argmax(axis=-1))
    scores = trainer.evaluate(X, y, mask=mask)
    chosen = np.take_along_axis(P, y[..., None], axis=-1)[..., 0]
    assert scores["loss"] == pytest.approx(-np.log(chosen[mask]).mean(), rel=1e-10)
    assert scores["accuracy"] == pytest.approx((predicted == y)[mask].mean())
    unmasked = trainer.evaluate(X, y)
    assert unmasked["loss"] == pytest.approx(-np.log(chosen).mean(), rel=1e-10)


def test_trains_a_delayed_copy_with_padding(backend, rng):
    """Many-to-many training learns y_t = x_{t-1} (needs the recurrence) on padded data."""
    n, steps = 96, 8
    symbols = rng.integers(0, K, (n, steps))
    X = np.eye(K)[symbols]
    y = np.roll(symbols, 1, axis=1)
    y[:, 0] = 0
    mask = padded_mask(rng.integers(3, steps + 1, n), steps)
    mask[:, 0] = False  # nothing to copy at the first step
    model = Sequential([RNN(16, return_sequences=True), TimeDistributed(Linear(K))],
                       n_inputs=K, device=backend, dtype="float32", seed=1)
    trainer = Trainer(model, optimizer="adam", lr=0.05, batch_size=32, verbose=0)
    before = trainer.evaluate(X, y, mask=mask)
    history = trainer.fit(X, y, epochs=10, mask=mask, validation_data=(X, y, mask))
    assert before["accuracy"] < 0.6 and history.val_accuracy[-1] > 0.99
    assert history.val_loss[-1] < before["loss"] / 10


@pytest.mark.parametrize("case, message", [
    ("labels_shape", r"one class label per time step, shape \(6, 5\)"),
    ("targets_shape", r"must have shape \(6, 5, 3\)"),
    ("labels_1d", r"class labels \(6, 5\) or targets \(6, 5, 3\)"),
    ("label_range", r"outside \[0, 3\)"),
    ("mask_shape", r"mask must have shape \(6, 5\)"),
    ("mask_values", r"only 0 and 1 \(or bool\); found 2 at row 0, column 0"),
    ("mask_empty", r"selects no time step"),
    ("mask_text", r"mask must be bool or 0/1"),
    ("val_mask_shape", r"X_val's mask must have shape \(6, 5\)"),
    ("mse_sum", r"not 'sum'"),
])
def test_bad_sequence_data_is_one_line_input_error(rng, case, message):
    model = sequence_model("numpy")
    X = rng.standard_normal((N, STEPS, D))
    y = rng.integers(0, K, (N, STEPS))
    mask = np.ones((N, STEPS), bool)
    kwargs, loss = {}, "cross_entropy"
    if case == "labels_shape":
        y = y[:, :-1]
    elif case == "targets_shape":
        y = np.zeros((N, STEPS, K + 1))
    elif case == "labels_1d":
        y = y[:, 0]
    elif case == "label_range":
        y[2, 3] = K
    elif case == "mask_shape":
        mask = mask[:, 1:]
    elif case == "mask_values":
        mask = mask.astype(int) * 2
    elif case == "mask_empty":
        mask = np.zeros((N, STEPS))
    elif case == "mask_text":
        mask = np.full((N, STEPS), "1")
    elif case == "val_mask_shape":
        kwargs["validation_data"] = (X, y, mask[:, :2])
    elif case == "mse_sum":
        y, loss = rng.standard_normal((N, STEPS, K)), MeanSquaredError("sum")
    trainer = Trainer(model, loss=loss, verbose=0)
    with pytest.raises(InputError, match=message) as info:
        trainer.fit(X, y, mask=mask, **kwargs)
    assert "\n" not in str(info.value)


def test_a_mask_needs_sequence_outputs(rng):
    model = Sequential([RNN(H), Linear(K)], n_inputs=D, device="numpy", dtype="float64")
    with pytest.raises(InputError, match=r"sequence outputs.*\(N, 3\)"):
        Trainer(model, verbose=0).fit(rng.standard_normal((N, STEPS, D)),
                                      rng.integers(0, K, N), mask=np.ones((N, STEPS)))


def test_compilers_decline_sequence_outputs_with_the_reason(backend_name, rng):
    model = sequence_model(backend_name)
    plan = model.plan("cross_entropy", "adam", 4)
    assert plan.sequence_outputs
    trainer = Trainer(model, batch_size=4, verbose=0)
    trainer.fit(rng.standard_normal((N, STEPS, D)), rng.integers(0, K, (N, STEPS)))
    assert trainer.step.compiler == "eager"
    for _, reason in trainer.step.declined:
        assert "sequences (N, T, K)" in reason
