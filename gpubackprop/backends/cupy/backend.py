"""The CuPy backend: the generic methods on the GPU, plus fused CUDA kernels.

Only the operations with a kernel in ``kernels/*.cu`` are overridden. Each
override launches its kernel when the arrays suit it (float32 or float64,
one dtype, C-contiguous, non-empty, expected shapes, no partial overlap
between arrays) and otherwise calls the generic method, so every input the
generic code accepts still works.

Importing this module imports CuPy; :func:`gpubackprop.backends.get_backend`
does so only after :func:`~gpubackprop.backends.gpu_status` found a usable GPU.
"""

from __future__ import annotations

import cupy
import numpy as np

from .library import default_library
from ..base import DERIVATIVES, Backend, kernel_can_take, step_state_fits
from ...nn.activations import CODES
from ...nn.optim import UPDATE_RULES

#: Threads per block of every launch (a multiple of the 32-lane warp).
BLOCK = 256
#: Largest grid launched; bigger arrays are covered by the kernels' grid-stride loops.
DEFAULT_MAX_BLOCKS = 4096
#: The ``act`` argument of the activation kernels: the registry's codes, which
#: kernels/activations.cu reads from the generated gbp_activation_codes.h.
ACTIVATION_CODES = CODES


class CupyBackend(Backend):
    """Runs on the current CUDA device through CuPy.

    Parameters
    ----------
    max_blocks : int
        Cap on the grid size of each launch, in blocks of :data:`BLOCK` threads.
    """

    name = "cupy"
    device = "gpu"
    host_reads_are_free = False

    def __init__(self, max_blocks: int = DEFAULT_MAX_BLOCKS):
        super().__init__(cupy)
        self.max_blocks = int(max_blocks)
        self.kernels = default_library()

    # ------------------------------------------------------------------ memory
    def to_numpy(self, X) -> np.ndarray:
        return X.get() if isinstance(X, cupy.ndarray) else np.asarray(X)

    def synchronize(self) -> None:
        cupy.cuda.get_current_stream().synchronize()

    # --------------------------------------------------------------- sampling
    def permutation(self, n: int, rng: np.random.Generator):
        """A permutation of ``range(n)`` drawn on the device, seeded from ``rng``.

        Drawing on the GPU keeps shuffling free of host-to-device copies (each
        of which would synchronise the stream); the host generator still makes
        the order reproducible for a given seed.
        """
        seed = int(rng.integers(2 ** 63 - 1))
        return cupy.random.RandomState(seed).permutation(n)

    # -------------------------------------------------------------------- TF32
    def tf32_enabled(self) -> bool:
        """Whether CuPy lets cuBLAS use TF32 tensor cores for float32 GEMMs."""
        from cupy._core import _routines_linalg as linalg
        return linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32

    def set_tf32(self, enabled: bool) -> bool:
        """Allow or forbid TF32 in float32 GEMMs (CuPy's ``CUPY_TF32``); returns the old state.

        TF32 rounds GEMM inputs to 10 mantissa bits (~1e-3 relative error).
        CuPy warns and keeps full float32 on GPUs older than compute capability 8.0.
        """
        from cupy._core import _routines_linalg as linalg
        previous = self.tf32_enabled()
        linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if enabled
                                else linalg.COMPUTE_TYPE_DEFAULT)
        return previous

    # ------------------------------------------------------------ activations
    def activation(self, Z, name: str, out=None):
        if out is None:
            ready = name in ACTIVATION_CODES and _kernel_ready(Z)
        else:
            ready = name in ACTIVATION_CODES and out.shape == Z.shape and _kernel_ready(Z, out)
        if not ready:
            return super().activation(Z, name, out=out)
        if out is None:
            out = cupy.empty_like(Z)
        self._launch("act_forward", Z.size, Z, out, np.int64(Z.size),
                     np.int32(ACTIVATION_CODES[name]))
        return out

    def bias_activation(self, Z, b, name: str, out=None):
        if not (name in ACTIVATION_CODES and Z.ndim == 2 and b.shape == Z.shape[1:]
                and _kernel_ready(Z, b)):
            return super().bias_activation(Z, b, name, out=out)
        if out is None:
            self._launch("bias_act", Z.size, Z, b, np.int64(Z.shape[0]), np.int64(Z.shape[1]),
                         np.int32(ACTIVATION_CODES[name]))
            return Z
        # Keep Z + b (an input-derivative activation's backward reads it), then f into out.
        self._launch("bias_act", Z.size, Z, b, np.int64(Z.shape[0]), np.int64(Z.shape[1]),
                     np.int32(ACTIVATION_CODES["identity"]))
        return self.activation(Z, name, out=out)

    def backprop_activation(self, dY, S, name: str, out=None):
        # identity (f' = 1) needs no kernel: the generic method returns dY or copies it.
        if name not in ACTIVATION_CODES or DERIVATIVES[name] is None or dY.shape != S.shape:
            return super().backprop_activation(dY, S, name, out=out)
        if out is None:
            ready = _kernel_ready(dY, S)
        else:
            ready = out.shape == S.shape and _kernel_ready(dY, S, out)
        if not ready:
            return super().backprop_activation(dY, S, name, out=out)
        if out is None:
            out = cupy.empty_like(dY)
        self._launch("act_backward", dY.size, dY, S, out, np.int64(dY.size),
                     np.int32(ACTIVATION_CODES[name]))
        return out

    def recurrent_activation(self, XW, HU, b, name: str = "tanh"):
        if not (name in ACTIVATION_CODES and HU.ndim == 2 and XW.shape == HU.shape
                and b.shape == HU.shape[1:] and _kernel_ready(XW, HU, b)):
            return super().recurrent_activation(XW, HU, b, name)
        self._launch("rnn_step", HU.size, XW, HU, b, np.int64(HU.shape[0]),
                     np.int64(HU.shape[1]), np.int32(ACTIVATION_CODES[name]))
        return HU

    # ----------------------------------------------------------------- losses
    def softmax_cross_entropy(self, Z, T, weights=None):
        if weights is not None or not (Z.ndim == 2 and T.shape == Z.shape
                                       and _kernel_ready(Z, T)):
            return super().softmax_cross_entropy(Z, T, weights)
        n_rows, n_cols = Z.shape
        dZ = cupy.empty_like(Z)
        row_losses = cupy.empty((n_rows,), dtype=Z.dtype)
        # One warp of 32 lanes per row.
        self._launch("softmax_xent", 32 * n_rows, Z, T, dZ, row_losses, np.int64(n_rows),
                     np.int64(n_cols), Z.dtype.type(1.0 / n_rows))
        return row_losses.mean(), dZ

    # ------------------------------------------------------------- optimizers
    # The kernels read the optimizer's step state on the device; only the
    # element count travels with a launch.
    def advance_optimizer(self, rule: str, state) -> None:
        if not step_state_fits(state, cupy):
            return super().advance_optimizer(rule, state)
        self._launch("optimizer_advance", 1, state, np.int32(UPDATE_RULES[rule].code))

    def _fused_update(self, kernel: str, W, dW, state, *slots) -> bool:
        """Launch ``kernel(W, dW, *slots, n, state)`` if the arrays suit it."""
        arrays = (W, dW, *slots)
        if not (all(A.shape == W.shape for A in arrays) and _kernel_ready(*arrays)
                and step_state_fits(state, cupy)):
            return False
        self._launch(kernel, W.size, *arrays, np.int64(W.size), state)
        return True

    def sgd_update(self, W, dW, state) -> None:
        if not self._fused_update("sgd_step", W, dW, state):
            super().sgd_update(W, dW, state)

    def momentum_update(self, W, dW, state, V) -> None:
        if not self._fused_update("momentum_step", W, dW, state, V):
            super().momentum_update(W, dW, state, V)

    def adam_update(self, W, dW, state, M, V) -> None:
        if not self._fused_update("adam_step", W, dW, state, M, V):
            super().adam_update(W, dW, state, M, V)

    def rmsprop_update(self, W, dW, state, V, B=None, G=None) -> None:
        # Unused slots are never read by the kernel: V stands in for them.
        slots = (V, V if B is None else B, V if G is None else G)
        if not self._fused_update("rmsprop_step", W, dW, state, *slots):
            super().rmsprop_update(W, dW, state, V, B, G)

    # ------------------------------------------------------------------ launch
    def _launch(self, name: str, n_threads: int, *args) -> None:
        """Launch ``name<T>`` (T from the first argument) over ``n_threads`` threads.

        Scalar arguments must already have the kernel's C type: ``np.int64``
        for ``long long``, ``np.int32`` for ``int``, the array dtype for ``T``.
        """
        kernel = self.kernels.get(name, args[0].dtype)
        blocks = min(-(-n_threads // BLOCK), self.max_blocks)
        kernel((blocks,), (BLOCK,), args)


def _kernel_ready(*arrays) -> bool:
    """Whether a kernel can take these CuPy arrays; see :func:`~.base.kernel_can_take`."""
    return kernel_can_take(arrays, cupy, _device_address)


def _device_address(X) -> int:
    return X.data.ptr
