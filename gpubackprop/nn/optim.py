"""Optimizers: SGD, momentum, Adam, each with optional global-norm clipping.

Updates run in place through the backend, one call per parameter, so the
GPU backend can fuse each into a single kernel launch.
"""

from __future__ import annotations

import numpy as np

from ..validation import check_choice, check_positive


class Optimizer:
    """Base class.

    Parameters
    ----------
    lr : float
        Learning rate (> 0); may be changed between steps by a schedule.
    clip_norm : float, optional
        When given, gradients are scaled so their joint L2 norm is at most this.
    """

    name = "optimizer"

    def __init__(self, lr: float, clip_norm: float | None = None):
        self.lr = check_positive(lr, "learning rate")
        self.clip_norm = None if clip_norm is None else check_positive(clip_norm, "clip norm")
        self.step_count = 0
        self.state: dict = {}

    def step(self, model) -> None:
        """Apply one update to every parameter of ``model`` from its gradients."""
        backend = model.backend
        named = model.parameters_and_gradients()
        if self.clip_norm is not None:
            backend.clip_by_global_norm([g for _, _, g in named], self.clip_norm)
        self.step_count += 1
        for name, W, dW in named:
            self.update(backend, name, W, dW)

    def update(self, backend, name: str, W, dW) -> None:
        raise NotImplementedError

    def state_slots(self, backend, name: str, W) -> tuple:
        """The state arrays of parameter ``name`` (shaped like ``W``), created when missing.

        Empty for SGD, ``(velocity,)`` for momentum, ``(m, v)`` for Adam.
        """
        return ()

    def _slot(self, backend, key: str, W):
        if key not in self.state:
            self.state[key] = backend.zeros(W.shape, W.dtype)
        return self.state[key]

    def config(self) -> dict:
        return {"name": self.name, "lr": self.lr, "clip_norm": self.clip_norm}

    def state_arrays(self, backend) -> dict:
        """Optimizer state as host arrays, for checkpoints."""
        arrays = {key: backend.to_numpy(value) for key, value in self.state.items()}
        arrays["step_count"] = np.asarray(self.step_count)
        return arrays

    def load_state_arrays(self, backend, arrays: dict) -> None:
        self.step_count = int(arrays.get("step_count", 0))
        self.state = {key: backend.asarray(value) for key, value in arrays.items()
                      if key != "step_count"}


class SGD(Optimizer):
    """Plain gradient descent: ``W -= lr * dW``."""

    name = "sgd"

    def update(self, backend, name, W, dW):
        backend.sgd_update(W, dW, self.lr)


class Momentum(Optimizer):
    """SGD with heavy-ball momentum: ``V = mu V - lr dW``; ``W += V``."""

    name = "momentum"

    def __init__(self, lr: float, momentum: float = 0.9, clip_norm: float | None = None):
        super().__init__(lr, clip_norm)
        if not 0 <= momentum < 1:
            from ..errors import InputError
            raise InputError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)

    def update(self, backend, name, W, dW):
        backend.momentum_update(W, dW, *self.state_slots(backend, name, W), self.lr,
                                self.momentum)

    def state_slots(self, backend, name, W):
        return (self._slot(backend, name + ".velocity", W),)

    def config(self):
        return {**super().config(), "momentum": self.momentum}


class Adam(Optimizer):
    """Adam (Kingma and Ba 2015) with bias-corrected moment estimates."""

    name = "adam"

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, clip_norm: float | None = None):
        super().__init__(lr, clip_norm)
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= beta < 1:
                from ..errors import InputError
                raise InputError(f"Adam's {name} must be in [0, 1), got {beta!r}")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.eps = check_positive(eps, "Adam's eps")

    def update(self, backend, name, W, dW):
        backend.adam_update(W, dW, *self.state_slots(backend, name, W), self.lr, self.beta1,
                            self.beta2, self.eps, self.step_count)

    def state_slots(self, backend, name, W):
        return self._slot(backend, name + ".m", W), self._slot(backend, name + ".v", W)

    def config(self):
        return {**super().config(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adam": Adam}


def get_optimizer(name, lr: float | None = None, **options) -> Optimizer:
    """An optimizer by name ("sgd", "momentum", "adam") or an instance as it is."""
    if isinstance(name, Optimizer):
        return name
    cls = OPTIMIZERS[check_choice(name, OPTIMIZERS, "optimizer")]
    if lr is None:
        lr = 1e-3 if cls is Adam else 0.1
    return cls(lr=lr, **options)
