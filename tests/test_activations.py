"""The activation registry and what hangs on it: codes, the CUDA switches on them, every
backend's formulas (the sigmoid exact in both tails, SiLU against PyTorch), and SiLU end to end.
"""

import re
import warnings

import numpy as np
import pytest

from gpubackprop.backends import base
from gpubackprop.backends.cupy import library as _kernels
from gpubackprop.cli.main import build_parser, main
from gpubackprop.errors import InputError
from gpubackprop.nn.activations import ACTIVATIONS, CODES, NAMES, RECURRENT_NAMES
from gpubackprop.nn.layers import Activation, Linear, layer_from_config
from gpubackprop.nn.precision import Precision
from gpubackprop.nn.recurrent import RNN

#: Largest error of the sigmoid in units in the last place of the exact value.
SIGMOID_ULPS = 4


# ------------------------------------------------------------------ the registry
def test_codes_number_the_activations_from_zero_without_gaps():
    assert sorted(CODES.values()) == list(range(len(ACTIVATIONS)))
    assert NAMES == tuple(sorted(CODES, key=CODES.get))
    assert all(spec.derivative_from in ("output", "input") for spec in ACTIVATIONS.values())
    assert ACTIVATIONS["silu"].needs_input and not ACTIVATIONS["sigmoid"].needs_input


def test_every_backend_formula_table_covers_exactly_the_registry():
    assert set(base.FORWARD) == set(base.DERIVATIVES) == set(ACTIVATIONS)
    assert tuple(base.ACTIVATIONS) == NAMES


@pytest.mark.numba
def test_numba_reads_its_codes_from_the_registry():
    from gpubackprop.backends.numba import kernels

    assert kernels.ACTIVATION_CODES == CODES
    assert [bool(x) for x in kernels.NEEDS_INPUT] == [ACTIVATIONS[n].needs_input for n in NAMES]


def test_recurrent_and_cli_choices_derive_from_the_registry(capsys):
    assert RECURRENT_NAMES == tuple(n for n in NAMES if ACTIVATIONS[n].bounded
                                    and not ACTIVATIONS[n].needs_input)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ", ".join(NAMES) in help_text


def test_the_cuda_switches_handle_every_code_but_identity():
    source = (_kernels.kernel_dir() / "activations.cu").read_text()
    assert f'#include "{_kernels.CONSTANTS_HEADER}"' in source
    assert not re.search(r"case\s+\d", source), "codes are written as GBP_ACT_* names"
    for name in NAMES:
        cases = len(re.findall(rf"case GBP_ACT_{name.upper()}\b", source))
        # Forward (gbp_activate) and backward (act_backward); identity is the default.
        assert cases == (0 if name == "identity" else 2), name


# ----------------------------------------------------------- sigmoid in both tails
def _exact_sigmoid(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.longdouble)
    return np.where(z >= 0, 1 / (1 + np.exp(-z)), np.exp(z) / (1 + np.exp(z)))


def _assert_within_ulps(got, exact, dtype, what):
    """At most SIGMOID_ULPS ulps where the exact value is a normal number; below that
    (z < -87 in float32), within the smallest normal (gradual underflow or flush to zero)."""
    rounded = exact.astype(dtype)
    tiny = np.finfo(dtype).tiny
    error = np.abs(got.astype(np.longdouble) - exact)
    normal = rounded >= tiny
    ulps = error[normal] / np.spacing(rounded[normal]).astype(np.longdouble)
    worst = int(np.argmax(ulps))
    assert ulps[worst] <= SIGMOID_ULPS, f"{what}: {float(ulps[worst]):.1f} ulps at z index {worst}"
    assert (error[~normal] <= tiny).all(), what


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_is_exact_in_both_tails_on_every_path(backend, dtype):
    z = np.linspace(-100, 40, 14007).astype(dtype)
    exact = _exact_sigmoid(z)
    Z = z.reshape(-1, 7)
    paths = {
        "activation": lambda: backend.activation(backend.asarray(Z), "sigmoid"),
        "bias_activation": lambda: backend.bias_activation(
            backend.asarray(Z.copy()), backend.zeros((7,), dtype), "sigmoid"),
        "recurrent_activation": lambda: backend.recurrent_activation(
            backend.zeros(Z.shape, dtype), backend.asarray(Z.copy()), backend.zeros((7,), dtype),
            "sigmoid"),
    }
    for what, run in paths.items():
        with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise",
                                                    divide="raise"):
            warnings.simplefilter("error")
            got = backend.to_numpy(run()).reshape(-1)
        _assert_within_ulps(got, exact, dtype, f"{backend.name} {what}")
    smallest = backend.to_numpy(backend.activation(backend.asarray(Z), "sigmoid"))[0, 0]
    if backend.name == "cupy" and dtype == np.float32:
        # CuPy compiles every kernel with -ftz=true: sigmoid(-100) = 3.7e-44, a float32
        # subnormal, flushes to zero on the GPU (the ulp check above allows it).
        assert smallest == 0
    else:
        assert smallest > 0


@pytest.mark.numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_sigmoid_of_the_whole_step_path_is_exact_in_both_tails(dtype):
    from gpubackprop.backends.numba import kernels

    z = np.linspace(-100, 40, 14007).astype(dtype).reshape(-1, 7)
    Y = np.empty_like(z)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        kernels.bias_activation(z.copy(), np.zeros(7, dtype), Y, CODES["sigmoid"])
    _assert_within_ulps(Y.reshape(-1), _exact_sigmoid(z.reshape(-1)), dtype, "numba activate")


# --------------------------------------------------------- against PyTorch autograd
@pytest.mark.parametrize("name, reference", [("silu", "silu"), ("sigmoid", "sigmoid")])
def test_forward_and_derivative_match_torch_autograd(backend, name, reference, torch):
    rng = np.random.default_rng(5)
    Z = np.concatenate([rng.standard_normal((64, 9)) * 4,
                        np.linspace(-60, 30, 64 * 9).reshape(64, 9)])
    dY = rng.standard_normal(Z.shape)
    z = torch.tensor(Z, dtype=torch.float64, requires_grad=True)
    y = getattr(torch.nn.functional, reference)(z)
    y.backward(torch.tensor(dY))
    Y = backend.activation(backend.asarray(Z), name)
    S = Z if ACTIVATIONS[name].needs_input else backend.to_numpy(Y)
    dZ = backend.backprop_activation(backend.asarray(dY), backend.asarray(S), name)
    np.testing.assert_allclose(backend.to_numpy(Y), y.detach().numpy(), rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(backend.to_numpy(dZ), z.grad.numpy(), rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------- SiLU end to end
def test_a_linear_silu_layer_keeps_its_pre_activation(backend, rng):
    layer = Linear(5, "silu")
    layer.build(backend, (4,), rng, Precision.uniform("float64"))
    X = backend.asarray(rng.standard_normal((6, 4)))
    Y = backend.to_numpy(layer.forward(X))
    Z = backend.to_numpy(X) @ backend.to_numpy(layer.params["W"]) + backend.to_numpy(
        layer.params["b"])
    np.testing.assert_allclose(Y, Z / (1 + np.exp(-Z)), rtol=1e-13)
    np.testing.assert_allclose(backend.to_numpy(layer._S), Z, rtol=1e-13)
    # Inference keeps nothing and computes in place.
    np.testing.assert_allclose(backend.to_numpy(layer.forward(X, train=False)), Y, rtol=1e-13)


def test_activation_layers_by_name_round_trip_through_their_config():
    layer = Activation("silu")
    assert layer.config() == {"type": "Activation", "name": "silu"}
    assert layer_from_config(layer.config()).name == "silu"
    with pytest.raises(InputError, match="unknown activation 'swish'"):
        Activation("swish")


def test_an_rnn_refuses_an_activation_whose_derivative_needs_its_input():
    with pytest.raises(InputError, match="unknown RNN activation 'silu'"):
        RNN(4, "silu")


def test_cli_trains_with_silu(capsys):
    assert main(["train", "digits", "--activation", "silu", "--epochs", "2", "--device",
                 "numpy", "--quiet"]) == 0
    accuracy = float(re.search(r"test accuracy ([\d.]+)", capsys.readouterr().out).group(1))
    assert accuracy > 0.8
