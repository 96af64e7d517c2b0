"""The Backend: every array operation on model data, written once against ``xp``.

``xp`` is NumPy or CuPy. The generic methods here are the reference
implementation; a GPU backend overrides only the operations it fuses into
a CUDA kernel and calls ``super()`` where a kernel cannot serve.

Conventions: batches are row-major ``(N, features)``; activation
derivatives are computed from the saved outputs ``Y``, never by recomputing
the activation; methods that take ``out=`` may write their result in place.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

ACTIVATIONS = ("sigmoid", "tanh", "relu", "identity")
#: Added to the global norm in :meth:`Backend.clip_by_global_norm` before dividing:
#: the scale is ``min(1, max_norm / (norm + CLIP_EPSILON))``. PyTorch's
#: ``clip_grad_norm_`` adds 1e-6 instead, so its clipped norm is smaller by a
#: relative ``(1e-6 - 1e-12) / norm``: 1e-7 for a norm of 10.
CLIP_EPSILON = 1e-12
#: The dtypes every fused kernel, CUDA or Numba, is compiled for.
KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def kernel_can_take(arrays, xp, address) -> bool:
    """Whether a fused kernel can take ``arrays`` (the first one's dtype is the kernel's).

    All must be non-empty C-contiguous ``xp.ndarray`` arrays of one dtype in
    :data:`KERNEL_DTYPES`, and any two must be either the same memory or
    disjoint: a kernel reads and writes element ``i`` in the same step, so
    exact aliasing is safe and partial overlap is not.

    Parameters
    ----------
    arrays : sequence of arrays
    xp : module
        ``numpy`` or ``cupy``; its ``may_share_memory`` screens each pair cheaply.
    address : callable
        The address of an array's first element (an int), asked only of pairs
        that may share memory.
    """
    dtype = arrays[0].dtype
    if dtype not in KERNEL_DTYPES:
        return False
    for X in arrays:
        if not (isinstance(X, xp.ndarray) and X.dtype == dtype and X.flags.c_contiguous
                and X.size > 0):
            return False
    for i, A in enumerate(arrays):
        for B in arrays[i + 1:]:
            if A is not B and xp.may_share_memory(A, B) and not (
                    A.shape == B.shape and address(A) == address(B)):
                return False
    return True


def adam_scalars(lr: float, beta1: float, beta2: float, eps: float, step: int):
    """Adam's bias-corrected step size and epsilon for step ``step`` (from 1).

    ``W -= step_size * M / (sqrt(V) + eps_hat)`` equals the textbook
    ``lr * m_hat / (sqrt(v_hat) + eps)``: eps is scaled like the bias-corrected
    form. Computed in float64 on the host, shared by every backend.

    Returns
    -------
    (step_size, eps_hat) : tuple of float
    """
    correction2 = np.sqrt(1 - beta2 ** step)
    return lr * correction2 / (1 - beta1 ** step), eps * correction2


def adam_kernel_scalars(lr: float, beta1: float, beta2: float, eps: float, step: int,
                        dtype) -> tuple:
    """The six scalars every fused Adam kernel takes, cast to ``dtype``.

    Returns
    -------
    tuple
        ``(beta1, 1 - beta1, beta2, 1 - beta2, step_size, eps_hat)`` with the
        last two from :func:`adam_scalars`.
    """
    step_size, eps_hat = adam_scalars(lr, beta1, beta2, eps, step)
    t = np.dtype(dtype).type
    return tuple(t(x) for x in (beta1, 1 - beta1, beta2, 1 - beta2, step_size, eps_hat))


class Backend:
    """Array operations for forward passes, backward passes and updates.

    Parameters
    ----------
    xp : module
        ``numpy`` or ``cupy``.
    """

    name = "generic"
    #: Where the arrays live: "cpu" or "gpu".
    device = "cpu"
    #: True when reading a scalar back to the host costs nothing (no device sync).
    host_reads_are_free = True

    def __init__(self, xp):
        self.xp = xp

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # ------------------------------------------------------------------ memory
    def asarray(self, X, dtype=None):
        """Return ``X`` as an array of this backend (no copy when already one)."""
        return self.xp.asarray(X, dtype=dtype)

    def to_numpy(self, X) -> np.ndarray:
        """Return ``X`` as a NumPy array on the host."""
        return np.asarray(X)

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""

    # --------------------------------------------------------- linear algebra
    def gemm(self, A, B, trans_a: bool = False, trans_b: bool = False, out=None):
        """Matrix product ``op(A) @ op(B)`` with ``op`` an optional transpose.

        Parameters
        ----------
        A : array, shape (M, K), or (K, M) when ``trans_a``
        B : array, shape (K, P), or (P, K) when ``trans_b``
        out : array, shape (M, P), optional

        Returns
        -------
        array, shape (M, P)
        """
        A = A.T if trans_a else A
        B = B.T if trans_b else B
        return self.xp.matmul(A, B, out=out)

    def sum_rows(self, X, out=None):
        """Column sums of ``X`` (N, D) -> (D,), e.g. a bias gradient."""
        return X.sum(axis=0, out=out)

    def training_step(self, model, loss, optimizer, batch_size: int):
        """A whole-batch training step fused by this backend, or None.

        None (the generic answer) means the Trainer runs the layers' own
        forward and backward passes and the optimizer's step. A backend that
        fuses returns a context manager that, inside its ``with`` block, is
        called as ``step(X, T, labels, index)`` and returns (loss, hits).
        """
        return None

    # ------------------------------------------------------------ activations
    def activation(self, Z, name: str, out=None):
        """Apply an activation elementwise: ``Y = f(Z)`` with shape of ``Z``."""
        xp = self.xp
        if out is None:
            out = xp.empty_like(Z)
        if name == "sigmoid":
            # 1 / (1 + exp(-z)) written as 0.5 + 0.5 tanh(z / 2): no overflow for any z.
            xp.multiply(Z, Z.dtype.type(0.5), out=out)
            xp.tanh(out, out=out)
            out *= Z.dtype.type(0.5)
            out += Z.dtype.type(0.5)
        elif name == "tanh":
            xp.tanh(Z, out=out)
        elif name == "relu":
            # Against a zero row rather than a scalar 0: NumPy vectorises the
            # broadcast row but not the scalar (about 2.4x faster on a 128x512 batch).
            xp.maximum(Z, xp.zeros(Z.shape[-1:], dtype=Z.dtype), out=out)
        elif name == "identity":
            if out is not Z:
                out[...] = Z
        else:
            raise ValueError(f"unknown activation {name!r}; valid names: {', '.join(ACTIVATIONS)}")
        return out

    def bias_activation(self, Z, b, name: str):
        """Add a bias row and apply an activation, in place on ``Z``.

        Parameters
        ----------
        Z : array, shape (N, D)
            Pre-activations without bias (typically a fresh GEMM result).
        b : array, shape (D,)

        Returns
        -------
        array, shape (N, D)
            ``f(Z + b)``, stored in ``Z``.
        """
        Z += b
        return self.activation(Z, name, out=Z)

    def backprop_activation(self, dY, Y, name: str, out=None):
        """Gradient through an activation from its saved output.

        Parameters
        ----------
        dY : array, shape (N, D)
            Gradient of the loss with respect to ``Y``.
        Y : array, shape (N, D)
            The activation's output saved in the forward pass.
        out : array, optional
            Where to write ``dZ``; may be ``dY`` itself.

        Returns
        -------
        array, shape (N, D)
            ``dZ``: sigmoid ``dY*Y*(1-Y)``, tanh ``dY*(1-Y*Y)``,
            relu ``dY*(Y>0)``, identity ``dY``.
        """
        xp = self.xp
        one = Y.dtype.type(1)
        # f'(Z) goes into a temporary first: ``out`` may be ``dY``, still unread.
        if name == "sigmoid":
            derivative = xp.subtract(one, Y)
            derivative *= Y
            dZ = xp.multiply(dY, derivative, out=out)
        elif name == "tanh":
            derivative = xp.multiply(Y, Y)
            xp.subtract(one, derivative, out=derivative)
            dZ = xp.multiply(dY, derivative, out=out)
        elif name == "relu":
            dZ = xp.multiply(dY, Y > 0, out=out)
        elif name == "identity":
            if out is None:
                return dY
            out[...] = dY
            dZ = out
        else:
            raise ValueError(f"unknown activation {name!r}; valid names: {', '.join(ACTIVATIONS)}")
        return dZ

    def recurrent_activation(self, XW, HU, b, name: str = "tanh"):
        """Hidden-state update of an Elman RNN step, in place on ``HU``.

        Parameters
        ----------
        XW : array, shape (N, H)
            Input projection ``x_t W`` of this time step.
        HU : array, shape (N, H)
            Recurrent projection ``h_{t-1} U``; overwritten with the result.
        b : array, shape (H,)

        Returns
        -------
        array, shape (N, H)
            ``h_t = f(XW + HU + b)``, stored in ``HU``.
        """
        HU += XW
        return self.bias_activation(HU, b, name)

    def recurrent_forward(self, XW, U, b, States, name: str = "tanh") -> None:
        """All the steps of an Elman RNN, ``h_t = f(XW[t] + h_{t-1} U + b)``, in place.

        Parameters
        ----------
        XW : array, shape (T, N, H)
            Input projections ``x_t W`` of every step.
        U : array, shape (H, H)
        b : array, shape (H,)
        States : array, shape (T + 1, N, H)
            ``States[0]`` holds ``h_{-1}``; ``States[t + 1]`` receives ``h_t``.
        """
        for t in range(XW.shape[0]):
            # h_t = f(x_t W + h_{t-1} U + b), written in place into States[t + 1].
            HU = self.gemm(States[t], U, out=States[t + 1])
            self.recurrent_activation(XW[t], HU, b, name)

    def recurrent_backward(self, dZ, States, U, name: str, first: int, block: int,
                           to_h0: bool):
        """Backpropagation through time over the steps ``first .. T-1``, in place on ``dZ``.

        Parameters
        ----------
        dZ : array, shape (T, N, H)
            In: the gradient of each step's own output (zero elsewhere). Out:
            ``dz_t``, the gradient of step t's pre-activation, for t >= ``first``.
        States : array, shape (T + 1, N, H)
            The forward pass's states (``States[t + 1]`` is ``h_t``).
        U : array, shape (H, H)
        first : int
            The earliest step any gradient reaches.
        block : int
            Truncation length k: nothing flows into step t-1 from a step t > 0
            with ``(T - t) % k == 0`` (k = T for full BPTT).
        to_h0 : bool
            Whether to carry the gradient back to the initial state.

        Returns
        -------
        array, shape (N, H), or None
            ``dh0 = dz_0 U^T`` when ``to_h0`` and step 0 is reached, else None.
        """
        T = dZ.shape[0]
        for t in range(T - 1, first - 1, -1):
            # dZ[t] holds dh_t (own output + carry from step t+1); through the
            # activation from the saved output: dz_t = dh_t * f'(h_t), in place.
            dz = self.backprop_activation(dZ[t], States[t + 1], name, out=dZ[t])
            if t > 0 and (T - t) % block == 0:
                continue  # truncated BPTT: step t starts a block, nothing flows into step t-1
            if t == 0 and not to_h0:
                continue  # a zero initial state needs no gradient
            # Carry back through the recurrent weights: dh_{t-1} += dz_t U^T.
            carry = self.gemm(dz, U, trans_b=True)
            if t == 0:
                return carry
            dZ[t - 1] += carry
        return None

    # ----------------------------------------------------------------- losses
    def one_hot(self, labels, n_classes: int, dtype):
        """Targets (N, n_classes) with a 1 in each row's label column."""
        xp = self.xp
        T = xp.zeros((labels.shape[0], n_classes), dtype=dtype)
        T[xp.arange(labels.shape[0]), labels] = 1
        return T

    def softmax(self, Z):
        """Softmax over the last axis of logits (N, C) or (N, T, C), stable for large logits."""
        xp = self.xp
        E = Z - Z.max(axis=-1, keepdims=True)
        xp.exp(E, out=E)
        E /= E.sum(axis=-1, keepdims=True)
        return E

    def softmax_cross_entropy(self, Z, T):
        """Mean cross-entropy of softmax(Z) against targets, and its gradient.

        The softmax is over the last axis (the classes). Logits of a sequence
        model, (N, T, C), are per-step predictions: they are read as N*T rows
        of C classes, and the loss is the mean over all N*T of them (as
        ``torch.nn.functional.cross_entropy`` on the flattened (N*T, C)).

        Parameters
        ----------
        Z : array, shape (N, C) or (N, T, C)
            Logits.
        T : array, same shape as ``Z``
            Target distributions (one-hot rows for class labels).

        Returns
        -------
        loss : 0-d array
            ``-sum(T * log_softmax(Z)) / R``, computed through log-softmax,
            with ``R`` the number of rows (N, or N*T).
        dZ : array, same shape as ``Z``
            ``(softmax(Z) - T) / R``.
        """
        if Z.ndim < 2 or tuple(Z.shape) != tuple(T.shape):
            raise InputError(f"softmax cross-entropy needs logits of shape (N, classes) or "
                             f"(N, steps, classes) and targets of the same shape, got "
                             f"{tuple(Z.shape)} and {tuple(T.shape)}")
        if Z.ndim > 2:
            # Fold the leading axes into rows: a backend's fused 2-D kernel then serves.
            n_classes = Z.shape[-1]
            loss, dZ = self.softmax_cross_entropy(Z.reshape(-1, n_classes),
                                                  T.reshape(-1, n_classes))
            return loss, dZ.reshape(Z.shape)
        xp = self.xp
        n = Z.shape[0]
        # log_softmax(Z) = Z - max - log(sum(exp(Z - max))), never exp of a large number.
        shifted = Z - Z.max(axis=1, keepdims=True)
        P = xp.exp(shifted)
        row_sums = P.sum(axis=1, keepdims=True)
        log_probs = shifted - xp.log(row_sums)
        loss = -(T * log_probs).sum() / n
        P /= row_sums
        P -= T
        P *= Z.dtype.type(1.0 / n)
        return loss, P

    def mse(self, Y, T, reduction: str = "mean"):
        """Squared error over all elements and its gradient.

        Parameters
        ----------
        Y, T : array, shape (N, K)
        reduction : {"mean", "sum"}
            Average or sum the N*K squared errors.

        Returns
        -------
        loss : 0-d array
            ``mean((Y - T) ** 2)`` or ``sum((Y - T) ** 2)``.
        dY : array, shape (N, K)
            ``2 (Y - T) / (N K)`` or ``2 (Y - T)``.
        """
        diff = Y - T
        loss = (diff * diff).sum()
        scale = 2.0
        if reduction == "mean":
            loss /= diff.size
            scale /= diff.size
        diff *= Y.dtype.type(scale)
        return loss, diff

    # ------------------------------------------------------------- optimizers
    def sgd_update(self, W, dW, lr: float) -> None:
        """``W -= lr * dW`` in place."""
        W -= W.dtype.type(lr) * dW

    def momentum_update(self, W, dW, V, lr: float, momentum: float) -> None:
        """Heavy-ball momentum in place: ``V = mu V - lr dW``; ``W += V``."""
        V *= V.dtype.type(momentum)
        V -= V.dtype.type(lr) * dW
        W += V

    def adam_update(self, W, dW, M, V, lr: float, beta1: float, beta2: float,
                    eps: float, step: int) -> None:
        """One Adam step in place (Kingma and Ba, with bias correction).

        ``M`` and ``V`` are the first and second moment estimates, same shape
        as ``W``; ``step`` counts from 1. Two temporaries, written with ``out=``.
        """
        xp = self.xp
        t = W.dtype.type
        A, B = xp.empty_like(W), xp.empty_like(W)
        M *= t(beta1)
        M += xp.multiply(dW, t(1 - beta1), out=A)
        V *= t(beta2)
        xp.multiply(dW, dW, out=A)
        A *= t(1 - beta2)
        V += A
        step_size, eps_hat = adam_scalars(lr, beta1, beta2, eps, step)
        denom = xp.sqrt(V, out=A)
        denom += t(eps_hat)
        B = xp.multiply(M, t(step_size), out=B)
        B /= denom
        W -= B

    def clip_by_global_norm(self, grads, max_norm: float):
        """Scale all gradients in place so their joint L2 norm is <= ``max_norm``.

        Every gradient is multiplied by ``min(1, max_norm / (norm + eps))``
        with ``norm`` the L2 norm of all of them together and ``eps`` =
        :data:`CLIP_EPSILON` (1e-12; PyTorch's ``clip_grad_norm_`` uses 1e-6,
        the same rule otherwise). A norm at or below ``max_norm`` leaves the
        gradients unchanged.

        Parameters
        ----------
        grads : list of arrays, any shapes
        max_norm : float

        Returns
        -------
        0-d array
            The norm before clipping (no host sync).
        """
        xp = self.xp
        total = sum((g * g).sum() for g in grads)
        norm = xp.sqrt(total)
        t = norm.dtype.type
        scale = xp.minimum(t(1), t(max_norm) / (norm + t(CLIP_EPSILON)))
        for g in grads:
            g *= scale.astype(g.dtype)
        return norm

    # --------------------------------------------------------------- sampling
    def permutation(self, n: int, rng: np.random.Generator):
        """A random permutation of ``range(n)``, (n,) int64, drawn from ``rng``."""
        return rng.permutation(n)

    def argmax_rows(self, Y):
        """Index of the largest entry along the last axis: (N, C) -> (N,), (N, T, C) -> (N, T)."""
        return Y.argmax(axis=-1)
