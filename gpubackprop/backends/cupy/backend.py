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

import contextlib

import cupy
import numpy as np

from .cublas_capture import load as load_capture_gemm, takes as capture_gemm_takes
from .eager_graphs import EagerGraphCompiler
from .library import INT32_MAX, all_names, default_library, index_dtype
from .step import DeviceStepCompiler
from ..base import (DERIVATIVES, Backend, CheckedGroups, kernel_can_take, permutation_keys,
                    step_state_fits)
from ...nn.activations import CODES
from ...nn.update_rules import UPDATE_RULES

#: Threads per block of every launch (a multiple of the 32-lane warp).
BLOCK = 256
#: Largest grid launched; bigger arrays are covered by the kernels' grid-stride loops.
DEFAULT_MAX_BLOCKS = 4096
#: The ``act`` argument of the activation kernels as their C ``int``: the registry's
#: codes, which kernels/activations.cu reads from the generated gbp_constants.h.
ACTIVATION_CODES = {name: np.int32(code) for name, code in CODES.items()}


class CupyBackend(Backend):
    """Runs on the current CUDA device through CuPy.

    Parameters
    ----------
    max_blocks : int
        Cap on the grid size of each launch, in blocks of :data:`BLOCK` threads.
    cuda_graphs : bool
        Whether compiled MLP steps are recorded and replayed as CUDA graphs
        (``GPUBACKPROP_CUDA_GRAPHS=0`` turns them off too; see :mod:`.graphs`).
    """

    name = "cupy"
    device = "gpu"
    host_reads_are_free = False
    #: A whole MLP step on preallocated device buffers, where the plan allows; else the
    #: eager interpreter's step, recorded as a CUDA graph.
    step_compilers = (DeviceStepCompiler(), EagerGraphCompiler())
    #: ``loader(cupy)`` -> the GEMM a CUDA graph may record (cuBLAS through ctypes).
    capture_gemm_loader = staticmethod(load_capture_gemm)

    def __init__(self, max_blocks: int = DEFAULT_MAX_BLOCKS, cuda_graphs: bool = True):
        super().__init__(cupy)
        self.max_blocks = int(max_blocks)
        self.cuda_graphs = bool(cuda_graphs)
        self._capture_gemm = None
        # The capture GEMM products go through while a step is recorded (see routed_products).
        self._routed_gemm = None
        #: Launches whose indices all stay at or below this run the 32-bit kernels.
        self.int32_index_limit = INT32_MAX
        self.kernels = default_library()
        # Parameter, gradient and optimizer-state groups already found fit for a kernel.
        self._checked = CheckedGroups()

    @property
    def kernels(self):
        """The kernel library launches come from (``KernelLibrary`` or a stand-in)."""
        return self._kernels

    @kernels.setter
    def kernels(self, library) -> None:
        self._kernels = library
        # (name, dtype, index dtype) -> (kernel of this library, the dtypes of its arrays)
        self._functions: dict = {}

    # ------------------------------------------------------------------ memory
    def to_numpy(self, X) -> np.ndarray:
        return X.get() if isinstance(X, cupy.ndarray) else np.asarray(X)

    def synchronize(self) -> None:
        cupy.cuda.get_current_stream().synchronize()

    def free_memory(self) -> int:
        """Free device memory plus what CuPy's pool holds unused."""
        free, _total = cupy.cuda.runtime.memGetInfo()
        return int(free) + int(cupy.get_default_memory_pool().free_bytes())

    # --------------------------------------------------------------- sampling
    def permutation(self, n: int, rng: np.random.Generator):
        """A permutation of ``range(n)`` drawn on the device from one 64-bit key of ``rng``.

        The order sorts the distinct keys of :func:`~..base.permutation_keys`:
        no device generator is created, nothing is copied to the device (a
        copy would synchronise the stream), and the host generator, whose state
        checkpoints save, makes the order reproducible and resumable. (CuPy's
        own ``permutation`` creates a cuRAND generator and sorts int32 keys,
        which tie on about a third of 60,000-row draws.)
        """
        key = int(rng.integers(2 ** 64, dtype=np.uint64))
        return cupy.argsort(permutation_keys(cupy, n, key))

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

    # ------------------------------------------------------------- CUDA graphs
    def capture_gemm(self):
        """The GEMM that may run while a stream records a CUDA graph, loaded once.

        Raises
        ------
        Exception
            Whatever :attr:`capture_gemm_loader` raises where it cannot load.
        """
        if self._capture_gemm is None:
            self._capture_gemm = self.capture_gemm_loader(cupy)
        return self._capture_gemm

    @contextlib.contextmanager
    def routed_products(self, gemm):
        """Inside, :meth:`gemm` runs through ``gemm`` (a bound capture GEMM) where it takes the
        operands: a stream that records refuses CuPy's own cuBLAS calls (cupy#6290)."""
        outer, self._routed_gemm = self._routed_gemm, gemm
        try:
            yield
        finally:
            self._routed_gemm = outer

    def gemm(self, A, B, trans_a: bool = False, trans_b: bool = False, out=None):
        routed = self._routed_gemm
        if routed is None or not capture_gemm_takes(A, B, out):
            return super().gemm(A, B, trans_a, trans_b, out=out)
        if out is None:
            out = cupy.empty((A.shape[1] if trans_a else A.shape[0],
                              B.shape[0] if trans_b else B.shape[1]), A.dtype)
        return routed.gemm(A, B, trans_a, trans_b, out=out)

    # ----------------------------------------------------------------- kernels
    def has_kernel(self, name: str) -> bool:
        """Whether ``kernels/*.cu`` defines a kernel ``name`` (see :data:`.library.KERNEL_FILES`)."""
        return name in all_names()

    def has_activation_kernel(self, name: str) -> bool:
        """Whether the activation kernels know the activation ``name`` (its registry code)."""
        return name in ACTIVATION_CODES

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
        self._launch("act_forward", Z.size, (Z, out), (Z.size,), (ACTIVATION_CODES[name],))
        return out

    def bias_activation(self, Z, b, name: str, out=None):
        if not (name in ACTIVATION_CODES and Z.ndim == 2 and b.shape == Z.shape[1:]
                and _kernel_ready(Z, b)):
            return super().bias_activation(Z, b, name, out=out)
        if out is None:
            self._launch("bias_act", Z.size, (Z, b), Z.shape, (ACTIVATION_CODES[name],))
            return Z
        # Keep Z + b (an input-derivative activation's backward reads it), then f into out.
        self._launch("bias_act", Z.size, (Z, b), Z.shape, (ACTIVATION_CODES["identity"],))
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
        self._launch("act_backward", dY.size, (dY, S, out), (dY.size,),
                     (ACTIVATION_CODES[name],))
        return out

    def recurrent_activation(self, XW, HU, b, name: str = "tanh"):
        if not (name in ACTIVATION_CODES and HU.ndim == 2 and XW.shape == HU.shape
                and b.shape == HU.shape[1:] and _kernel_ready(XW, HU, b)):
            return super().recurrent_activation(XW, HU, b, name)
        self._launch("rnn_step", HU.size, (XW, HU, b), HU.shape, (ACTIVATION_CODES[name],))
        return HU

    # ---------------------------------------------------------- recurrent cells
    # One launch of kernels/recurrent_cells.cu per time step each way; the arrays of a
    # launch are given largest first (the (N, 4H) gates), which sets T and the index type.
    def lstm_cell_forward(self, G, c_prev, h_out, c_out, gates_out):
        if not (_cell_shapes(c_prev, (G, 4), (gates_out, 4), (h_out, 1), (c_out, 1))
                and _kernel_ready(G, c_prev, h_out, c_out, gates_out)):
            return super().lstm_cell_forward(G, c_prev, h_out, c_out, gates_out)
        self._launch("lstm_cell_forward", c_prev.size, (G, c_prev, h_out, c_out, gates_out),
                     c_prev.shape, ())
        return h_out, c_out, gates_out

    def lstm_cell_backward(self, dh, dc, gates, c_prev, c, dG_out, dc_prev_out):
        if not (_cell_shapes(c_prev, (gates, 4), (dG_out, 4), (dh, 1), (dc, 1), (c, 1),
                             (dc_prev_out, 1))
                and _kernel_ready(gates, dh, dc, c_prev, c, dG_out, dc_prev_out)):
            return super().lstm_cell_backward(dh, dc, gates, c_prev, c, dG_out, dc_prev_out)
        self._launch("lstm_cell_backward", c_prev.size,
                     (gates, dh, dc, c_prev, c, dG_out, dc_prev_out), c_prev.shape, ())
        return dG_out, dc_prev_out

    def gru_cell_forward(self, Gx, Gh, h_prev, h_out, gates_out):
        if not (_cell_shapes(h_prev, (gates_out, 4), (Gx, 3), (Gh, 3), (h_out, 1))
                and _kernel_ready(gates_out, Gx, Gh, h_prev, h_out)):
            return super().gru_cell_forward(Gx, Gh, h_prev, h_out, gates_out)
        self._launch("gru_cell_forward", h_prev.size, (gates_out, Gx, Gh, h_prev, h_out),
                     h_prev.shape, ())
        return h_out, gates_out

    def gru_cell_backward(self, dh, gates, h_prev, dGx_out, dGh_out, dh_prev_out):
        if not (_cell_shapes(h_prev, (gates, 4), (dGx_out, 3), (dGh_out, 3), (dh, 1),
                             (dh_prev_out, 1))
                and _kernel_ready(gates, dh, h_prev, dGx_out, dGh_out, dh_prev_out)):
            return super().gru_cell_backward(dh, gates, h_prev, dGx_out, dGh_out, dh_prev_out)
        self._launch("gru_cell_backward", h_prev.size,
                     (gates, dh, h_prev, dGx_out, dGh_out, dh_prev_out), h_prev.shape, ())
        return dGx_out, dGh_out, dh_prev_out

    # ----------------------------------------------------------------- losses
    def softmax_cross_entropy(self, Z, T, weights=None):
        if weights is not None or not (Z.ndim == 2 and T.shape == Z.shape
                                       and _kernel_ready(Z, T)):
            return super().softmax_cross_entropy(Z, T, weights)
        dZ = cupy.empty_like(Z)
        row_losses = cupy.empty((Z.shape[0],), dtype=Z.dtype)
        self.softmax_cross_entropy_into(Z, T, dZ, row_losses)
        return row_losses.mean(), dZ

    def softmax_cross_entropy_into(self, Z, T, dZ, row_losses) -> None:
        """The softmax cross-entropy kernel into given arrays (nothing allocated).

        Parameters
        ----------
        Z, T : arrays (N, C)
            Logits and targets, C-contiguous, one kernel dtype.
        dZ : array (N, C)
            Receives ``(softmax(Z) - T) / N``.
        row_losses : array (N,)
            Receives each row's ``-sum(T * log_softmax(Z))``.
        """
        n_rows, n_cols = Z.shape
        # One warp of 32 lanes per row.
        self._launch("softmax_xent", 32 * n_rows, (Z, T, dZ, row_losses), Z.shape,
                     (Z.dtype.type(1.0 / n_rows),))

    def store_step_result(self, Z, row_losses, labels, losses, hits, counter) -> None:
        """A step's mean loss and hits into the ring slot ``counter[0]``, which then moves on.

        Parameters
        ----------
        Z : array (N, C)
            The logits; a row hits when its first largest logit is at its label.
        row_losses : array (N,)
        labels : int64 array (N,) or None
            None stores 0 hits.
        losses : array (slots,); hits : int64 array (slots,)
            The ring.
        counter : int64 array (1,)
            The slot to write; becomes ``(counter + 1) % slots``.
        """
        n_rows, n_cols = Z.shape
        # Unread without labels: the hits ring stands in for them.
        self._launch("step_result", 32, (Z, row_losses, hits if labels is None else labels,
                                         losses, hits, counter),
                     (n_rows, n_cols, losses.shape[0]), (np.int32(labels is not None),))

    # ------------------------------------------------------------- optimizers
    # The kernels read the optimizer's step state on the device; only the element count
    # travels with a launch. A parameter, its gradient and its optimizer state live as
    # long as the model and are updated every step: each group is checked once (see
    # CheckedGroups).
    def advance_optimizer(self, rule: str, state) -> None:
        if not step_state_fits(state, cupy):
            return super().advance_optimizer(rule, state)
        self._launch("optimizer_advance", 1, (state,), (), (np.int32(UPDATE_RULES[rule].code),))

    def _fused_update(self, kernel: str, W, dW, state, *slots) -> bool:
        """Launch ``kernel(W, dW, *slots, state, n)`` if the arrays suit it."""
        arrays = (W, dW, *slots)
        if not (all(A.shape == W.shape for A in arrays) and step_state_fits(state, cupy)
                and self._long_lived_ready(*arrays)):
            return False
        self._launch(kernel, W.size, (*arrays, state), (W.size,), ())
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

    def _long_lived_ready(self, *arrays) -> bool:
        """:func:`_kernel_ready`, answered from memory for a group already found fit."""
        if arrays in self._checked:
            return True
        if not _kernel_ready(*arrays):
            return False
        self._checked.add(arrays)
        return True

    # ------------------------------------------------------------------ launch
    def _launch(self, name: str, n_threads: int, arrays: tuple, sizes: tuple,
                scalars: tuple) -> None:
        """Launch ``name<T, I>`` over ``n_threads`` threads with ``(*arrays, *sizes, *scalars)``.

        T is the dtype of ``arrays[0]``, the launch's largest array; I is 32-bit
        when every index fits (see :func:`~.library.index_dtype`) and 64-bit
        otherwise, and ``sizes`` are passed as I. ``scalars`` must already have
        the kernel's C type: ``np.int32`` for ``int``, the array dtype for ``T``.
        """
        blocks = min(-(-n_threads // BLOCK), self.max_blocks)
        index = index_dtype(arrays[0].size, blocks * BLOCK, self.int32_index_limit)
        key = (name, arrays[0].dtype, index)
        entry = self._functions.get(key)
        if entry is None:
            entry = self._functions[key] = (self._kernels.get(*key),
                                            self._kernels.array_dtypes(*key))
        kernel, expected = entry
        # Each array against its own parameter's type (T*, or a fixed one such as double*):
        # a GPU would read a wrong dtype as garbage.
        if tuple(A.dtype for A in arrays) != expected:
            raise TypeError(f"{name}<{arrays[0].dtype}>: arrays of dtypes "
                            f"{[A.dtype.name for A in arrays]}, its parameters read "
                            f"{[dtype.name for dtype in expected]}")
        kernel((blocks,), (BLOCK,), (*arrays, *map(index, sizes), *scalars))


def _kernel_ready(*arrays) -> bool:
    """Whether a kernel can take these CuPy arrays; see :func:`~.base.kernel_can_take`."""
    return kernel_can_take(arrays, cupy, _device_address)


def _cell_shapes(state, *arrays) -> bool:
    """Whether ``state`` is (N, H) and each ``(A, k)`` of ``arrays`` is (N, k H).

    The shapes a recurrent-cell kernel indexes its arrays by: the (N, H) states
    and the (N, 3H) or (N, 4H) gate rows of the same N samples.
    """
    if state.ndim != 2:
        return False
    n_rows, n_cols = state.shape
    return all(A.shape == (n_rows, k * n_cols) for A, k in arrays)


def _device_address(X) -> int:
    return X.data.ptr
