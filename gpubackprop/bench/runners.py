"""The implementations ``gpubackprop bench`` times, behind one small interface.

Every runner trains the same architecture on the same data with the same
batch size and optimizer (:data:`OPTIMIZERS`: Adam at lr 1e-3 or plain SGD at
lr 0.1) and answers three calls:
``epoch()`` trains one full epoch and returns its wall-clock seconds (device
work finished inside the timed region), ``accuracy()`` gives the test
accuracy, ``name`` and ``device`` label the row. A runner that cannot run
here raises :class:`Unavailable` with the reason from its constructor.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from ..nn.layers import Linear
from ..nn.model import Sequential, mlp
from ..nn.gated_recurrent import GRU, LSTM
from ..nn.recurrent import RNN
from .textbook import TextbookMLP
from ..training.trainer import Trainer

#: The optimizers every runner can use, with their learning rates.
OPTIMIZERS = {"adam": 1e-3, "sgd": 0.1}
#: Gradient clipping of the row-MNIST recurrent models (their training presets), applied
#: by every runner.
RNN_CLIP_NORM = 5.0
#: Our recurrent layer class of each recurrent kind; PyTorch's module has the same name.
RECURRENT_KINDS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


class Unavailable(Exception):
    """This runner cannot run here; the message says why."""


@dataclass(frozen=True)
class ModelSpec:
    """A reference architecture: an MLP ``784-h...-10`` or a row-MNIST recurrent model.

    ``hidden`` are the hidden widths; for a recurrent ``kind`` (a key of
    :data:`RECURRENT_KINDS`: the tanh Elman RNN, the LSTM or the GRU) the images
    are read as 28 rows of 28 pixels and the one hidden width is the state's.
    """

    name: str
    hidden: tuple
    kind: str = "mlp"

    @property
    def sizes(self) -> tuple:
        return (784, *self.hidden, 10)


MODELS = {spec.name: spec for spec in (
    ModelSpec("784-100-10", (100,)), ModelSpec("784-128-10", (128,)), ModelSpec("784-512-10", (512,)),
    ModelSpec("784-1024-1024-10", (1024, 1024)), ModelSpec("rnn-28x28-128-10", (128,), "rnn"),
    ModelSpec("lstm-28x28-128-10", (128,), "lstm"), ModelSpec("gru-28x28-128-10", (128,), "gru"))}


@dataclass
class BenchData:
    """Training and test arrays, float32 (N, 784) in [0, 1] and int64 labels."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    source: str

    def inputs(self, spec: ModelSpec, X):
        """``X`` as the model reads it: rows (N, 784) or row sequences (N, 28, 28)."""
        return X.reshape(len(X), 28, 28) if spec.kind in RECURRENT_KINDS else X


#: The reference MLP whose compiled step ``gpubackprop info`` reports.
REFERENCE_MLP = "784-512-10"


def reference_step(device="auto", batch_size: int = 128):
    """The step the Trainer would take for :data:`REFERENCE_MLP` with Adam on ``device``.

    Returns
    -------
    Step
        ``step.describe()`` names its compiler and why earlier ones declined.
    """
    spec = MODELS[REFERENCE_MLP]
    model = mlp(784, spec.hidden, 10, device=device)
    return model.compile_step("cross_entropy", "adam", batch_size)


class Runner:
    name = "runner"
    device = "cpu"

    def epoch(self) -> float:
        raise NotImplementedError

    def step_compiler(self) -> str | None:
        """Who compiled the training step, and why others declined (gpubackprop's runners)."""
        return None

    def accuracy(self) -> float:
        return float("nan")

    def facts(self) -> dict:
        """What the runner's library reports about itself for the machine line (PyTorch's
        version and threads), or nothing."""
        return {}

    def close(self) -> None:
        """Release what the runner holds beyond its arrays (a child process)."""


class Ours(Runner):
    """gpubackprop's Trainer on a backend; the epoch time is the one it records."""

    name = "gpubackprop"

    def __init__(self, spec, data, batch_size, device="cpu", seed=0, optimizer="adam"):
        from ..backends import get_backend

        self.backend = get_backend(device)
        self.device = self.backend.device
        self.name = f"gpubackprop ({self.backend.name})"
        if spec.kind in RECURRENT_KINDS:
            options = {"activation": "tanh"} if spec.kind == "rnn" else {}
            model = Sequential([RECURRENT_KINDS[spec.kind](spec.hidden[0], **options),
                                Linear(10)], n_inputs=28, device=self.backend, seed=seed)
        else:
            model = mlp(784, spec.hidden, 10, device=self.backend, seed=seed)
        self.trainer = Trainer(model, optimizer=optimizer, lr=OPTIMIZERS[optimizer],
                               batch_size=batch_size, seed=seed,
                               clip_norm=RNN_CLIP_NORM if spec.kind in RECURRENT_KINDS
                               else None,
                               verbose=0)
        self.spec, self.data = spec, data

    def epoch(self):
        self.trainer.fit(self.data.inputs(self.spec, self.data.X_train), self.data.y_train)
        return self.trainer.history.epoch_time[-1]

    def step_compiler(self):
        return None if self.trainer.step is None else self.trainer.step.describe()

    def accuracy(self):
        X_test = self.data.inputs(self.spec, self.data.X_test)
        return self.trainer.evaluate(X_test, self.data.y_test)["accuracy"]


class OursReference(Ours):
    """gpubackprop on the NumPy reference backend: what the fused CPU kernels save."""

    def __init__(self, spec, data, batch_size, device="cpu", **options):
        from ..backends import get_backend

        if device != "cpu":
            raise Unavailable("the NumPy reference backend runs on the CPU")
        if get_backend("cpu").name == "numpy":
            raise Unavailable("the CPU backend is the NumPy reference already (no Numba)")
        super().__init__(spec, data, batch_size, device="numpy", **options)


class Textbook(Runner):
    """The tutorial's plain NumPy loop (:mod:`gpubackprop.bench.textbook`)."""

    name = "textbook NumPy loop"

    def __init__(self, spec, data, batch_size, device="cpu", seed=0, optimizer="adam"):
        if spec.kind != "mlp":
            raise Unavailable("the textbook loop is an MLP")
        self.net = TextbookMLP(spec.sizes, optimizer=optimizer, lr=OPTIMIZERS[optimizer],
                               seed=seed)
        self.data, self.batch_size = data, batch_size

    def epoch(self):
        started = time.perf_counter()
        self.net.train_epoch(self.data.X_train, self.data.y_train, self.batch_size)
        return time.perf_counter() - started

    def accuracy(self):
        return float((self.net.predict(self.data.X_test) == self.data.y_test).mean())


class SklearnMLP(Runner):
    """scikit-learn's MLPClassifier; one epoch is one ``partial_fit`` over the data.

    ``partial_fit`` makes exactly one shuffled pass in ``batch_size`` batches
    (as ``fit`` with ``max_iter=1, warm_start=True`` does, without the
    convergence warning); ``alpha=0`` so it minimises the same loss. float32
    data trains in float32.
    """

    name = "scikit-learn MLPClassifier"

    def __init__(self, spec, data, batch_size, device="cpu", seed=0, optimizer="adam"):
        if spec.kind != "mlp":
            raise Unavailable("scikit-learn has no recurrent network")
        # Plain SGD: constant rate, no momentum (sklearn's default momentum is 0.9).
        sgd = dict(learning_rate="constant", momentum=0.0, nesterovs_momentum=False)
        self.clf = self.estimator(hidden_layer_sizes=spec.hidden, activation="relu",
                                  solver=optimizer, alpha=0.0, batch_size=batch_size,
                                  learning_rate_init=OPTIMIZERS[optimizer], shuffle=True,
                                  random_state=seed, **(sgd if optimizer == "sgd" else {}),
                                  **self.options(device))
        self.data = data
        self.classes = np.arange(10)

    @staticmethod
    def estimator(**settings):
        from sklearn.neural_network import MLPClassifier

        return MLPClassifier(**settings)

    def options(self, device) -> dict:
        """Settings beyond scikit-learn's (none for scikit-learn itself)."""
        if device != "cpu":
            raise Unavailable("scikit-learn runs on the CPU")
        return {}

    def epoch(self):
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.clf.partial_fit(self.data.X_train, self.data.y_train, classes=self.classes)
        return time.perf_counter() - started

    def accuracy(self):
        return float(self.clf.score(self.data.X_test, self.data.y_test))


class OursSklearnMLP(SklearnMLP):
    """gpubackprop.sklearn's MLPClassifier with scikit-learn's runner's settings, on a backend."""

    name = "gpubackprop.sklearn MLPClassifier"

    @staticmethod
    def estimator(**settings):
        from ..sklearn import MLPClassifier

        return MLPClassifier(**settings)

    def options(self, device) -> dict:
        from ..backends import get_backend

        self.device = get_backend(device).device
        return {"device": device}


def import_torch():
    """PyTorch, or :class:`Unavailable` with the reason.

    Imported with the user's thread environment, not the wait policy
    gpubackprop sets for its own threads (:func:`~gpubackprop.cpu_threads.
    users_thread_environment`): PyTorch's OpenMP reads it once, as it loads,
    and is measured as its users run it (docs/performance.md).
    """
    from ..cpu_threads import users_thread_environment

    try:
        with users_thread_environment():
            import torch
    except ImportError as exc:
        raise Unavailable(f"PyTorch is not importable ({exc})") from None
    return torch


class Torch(Runner):
    """PyTorch eager: data resident on the device, float32, TF32 off, same optimizer.

    On the CPU it uses as many threads as NumPy's BLAS may (``threads``).
    """

    name = "PyTorch eager"

    def __init__(self, spec, data, batch_size, device="cpu", seed=0, optimizer="adam",
                 threads=None):
        torch = self.torch = import_torch()
        self.device = device
        if device == "gpu":
            if not torch.cuda.is_available():
                raise Unavailable("PyTorch has no CUDA device")
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        elif threads:
            torch.set_num_threads(threads)
        self.dev = torch.device("cuda" if device == "gpu" else "cpu")
        torch.manual_seed(seed)
        nn = torch.nn
        if spec.kind in RECURRENT_KINDS:
            self.net = _TorchRNN(nn, spec.kind, spec.hidden[0]).to(self.dev)
        else:
            layers = []
            for m, n in zip(spec.sizes[:-2], spec.sizes[1:-1]):
                layers += [nn.Linear(m, n), nn.ReLU()]
            self.net = nn.Sequential(*layers, nn.Linear(spec.sizes[-2], 10)).to(self.dev)
        optimizer_class = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
        self.optimizer = optimizer_class(self.net.parameters(), lr=OPTIMIZERS[optimizer])
        self.loss = nn.CrossEntropyLoss()
        self.clip = RNN_CLIP_NORM if spec.kind in RECURRENT_KINDS else None
        as_tensor = lambda A: torch.as_tensor(A).to(self.dev)  # noqa: E731
        self.X, self.y = as_tensor(data.inputs(spec, data.X_train)), as_tensor(data.y_train)
        self.X_test = as_tensor(data.inputs(spec, data.X_test))
        self.y_test = as_tensor(data.y_test)
        self.batch_size = batch_size
        self.generator = torch.Generator(device=self.dev).manual_seed(seed)

    def facts(self) -> dict:
        from ..machine import torch_facts

        return torch_facts(self.torch)

    def _sync(self):
        if self.device == "gpu":
            self.torch.cuda.synchronize()

    def epoch(self):
        torch, net, n = self.torch, self.net, len(self.X)
        self._sync()
        started = time.perf_counter()
        order = torch.randperm(n, device=self.dev, generator=self.generator)
        for start in range(0, n, self.batch_size):
            index = order[start:start + self.batch_size]
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(net(self.X[index]), self.y[index])
            loss.backward()
            if self.clip is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), self.clip)
            self.optimizer.step()
        self._sync()
        return time.perf_counter() - started

    def accuracy(self):
        with self.torch.no_grad():
            predicted = self.net(self.X_test).argmax(dim=1)
        return float((predicted == self.y_test).float().mean())


class _TorchRNN:
    """Factory for PyTorch's tanh RNN, LSTM or GRU with a Linear on its last state."""

    def __new__(cls, nn, kind, hidden):
        class RowRNN(nn.Module):
            def __init__(self):
                super().__init__()
                options = {"nonlinearity": "tanh"} if kind == "rnn" else {}
                self.rnn = getattr(nn, RECURRENT_KINDS[kind].__name__)(
                    28, hidden, batch_first=True, **options)
                self.out = nn.Linear(hidden, 10)

            def forward(self, X):
                return self.out(self.rnn(X)[0][:, -1])

        return RowRNN()


class GemmOnly(Runner):
    """Only the matrix products of our training epoch, on the same shapes.

    Per batch of an MLP: forward ``A_i @ W_i`` for every layer, backward
    ``A_i^T @ dZ_i`` for every layer and ``dZ_i @ W_i^T`` for all but the
    first. For the RNN: the input projection of all steps at once, one
    ``h_t @ U`` per step, the carries ``dz_t @ U^T`` and the two weight
    gradients as single GEMMs, as :class:`gpubackprop.nn.recurrent.RNN` does.
    Inputs are contiguous slices of the training data (no gather); the
    output gradients are random non-zero arrays. Nothing else is computed.
    """

    name = "GEMMs alone"

    def __init__(self, spec, data, batch_size, device="cpu", seed=0, optimizer="adam"):
        from ..backends import get_backend

        if spec.kind not in ("mlp", "rnn"):
            raise Unavailable(f"the GEMM-only runner covers the MLPs and the Elman RNN, "
                              f"not the {spec.kind}")
        self.backend = get_backend(device)
        self.device = self.backend.device
        xp = self.xp = self.backend.xp
        rng = np.random.default_rng(seed)
        array = lambda *shape: xp.asarray(rng.standard_normal(shape).astype(np.float32))  # noqa
        self.spec, self.batch_size = spec, batch_size
        self.X = xp.asarray(data.inputs(spec, data.X_train))
        b = batch_size
        if spec.kind == "rnn":
            h = spec.hidden[0]
            # U scaled to unit gain so 28 products h_t @ U stay finite.
            self.W, self.U, self.V = array(28, h), array(h, h) / np.sqrt(h), array(h, 10)
            self.XW, self.S = array(28 * b, h), array(29, b, h)
            self.dZ, self.dOut = array(28 * b, h), array(b, 10)
            self.dW, self.dU = array(28, h), array(h, h)
            self.dV, self.dh = array(h, 10), array(b, h)
        else:
            sizes = spec.sizes
            self.Ws = [array(m, n) for m, n in zip(sizes[:-1], sizes[1:])]
            self.As = [array(b, n) for n in sizes[1:]]
            self.dZs = [array(b, n) for n in sizes[1:]]
            self.dAs = [array(b, n) for n in sizes[:-1]]
            self.dWs = [array(m, n) for m, n in zip(sizes[:-1], sizes[1:])]

    def epoch(self):
        n = len(self.X)
        self.backend.synchronize()
        started = time.perf_counter()
        for start in range(0, n, self.batch_size):
            X = self.X[start:start + self.batch_size]
            (self._rnn_batch if self.spec.kind == "rnn" else self._mlp_batch)(X, len(X))
        self.backend.synchronize()
        return time.perf_counter() - started

    def _mlp_batch(self, X, b):
        matmul = self.xp.matmul
        inputs = [X] + [A[:b] for A in self.As[:-1]]
        for A, W, Z in zip(inputs, self.Ws, self.As):
            matmul(A, W, out=Z[:b])
        for i in reversed(range(len(self.Ws))):
            matmul(inputs[i].T, self.dZs[i][:b], out=self.dWs[i])
            if i > 0:
                matmul(self.dZs[i][:b], self.Ws[i].T, out=self.dAs[i][:b])

    def _rnn_batch(self, X, b):
        xp, matmul, T = self.xp, self.xp.matmul, 28
        X_tm = xp.ascontiguousarray(X.transpose(1, 0, 2)).reshape(T * b, 28)
        matmul(X_tm, self.W, out=self.XW[:T * b])
        for t in range(T):
            matmul(self.S[t, :b], self.U, out=self.S[t + 1, :b])
        matmul(self.S[T, :b], self.V, out=self.dOut[:b])
        matmul(self.S[T, :b].T, self.dOut[:b], out=self.dV)
        matmul(self.dOut[:b], self.V.T, out=self.dh[:b])
        for t in range(T - 1):
            matmul(self.dZ[t * b:(t + 1) * b], self.U.T, out=self.dh[:b])
        matmul(X_tm.T, self.dZ[:T * b], out=self.dW)
        matmul(self.S[:T, :b].reshape(T * b, -1).T, self.dZ[:T * b], out=self.dU)


RUNNERS = {"ours": Ours, "ours-numpy": OursReference, "textbook": Textbook,
           "sklearn": SklearnMLP, "ours-sklearn": OursSklearnMLP, "torch": Torch,
           "gemm": GemmOnly}
