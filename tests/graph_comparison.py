"""Recorded (CUDA graph) against unrecorded training: the comparisons both graph test
files make, emulated (bit for bit) or on a GPU (to float32 rounding)."""

import numpy as np


def exact(backend) -> bool:
    """Whether recorded and unrecorded steps run the same products (the emulation's NumPy)."""
    return backend.name == "cupy-emulated"


def assert_same_losses(backend, recorded, unrecorded):
    """Per-step losses equal (emulated), or within float32 rounding (GPU)."""
    np.testing.assert_allclose(recorded, unrecorded, rtol=0 if exact(backend) else 1e-5)


def assert_same_training(backend, recorded, unrecorded, figures_tolerance=(1e-4, 1e-6),
                         states_tolerance=(1e-3, 1e-5)):
    """``recorded`` and ``unrecorded`` are ``(model, figures)``: the figures (losses and
    such) and every state array equal (emulated), or within ``(rtol, atol)`` (GPU)."""
    (model, figures), (plain_model, expected) = recorded, unrecorded
    states = model.state_arrays(), plain_model.state_arrays()
    if exact(backend):
        np.testing.assert_array_equal(figures, expected)
        for name, W in states[1].items():
            np.testing.assert_array_equal(states[0][name], W, err_msg=name)
    else:
        rtol, atol = figures_tolerance
        np.testing.assert_allclose(figures, expected, rtol=rtol, atol=atol)
        rtol, atol = states_tolerance
        for name, W in states[1].items():
            np.testing.assert_allclose(states[0][name], W, rtol=rtol, atol=atol, err_msg=name)


def recorded_then_unrecorded(backend, run):
    """``run()`` with the backend's CUDA graphs on, then off; both results. The switch is
    on again afterwards, whatever happens."""
    try:
        backend.cuda_graphs = True
        recorded = run()
        backend.cuda_graphs = False
        unrecorded = run()
    finally:
        backend.cuda_graphs = True
    return recorded, unrecorded
