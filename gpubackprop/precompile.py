"""Compile the fused CPU backend's usual signatures ahead of time, into Numba's disk cache.

``python -m gpubackprop.precompile`` trains a tiny model on each compiled
CPU path, in float32 and float64: the whole MLP step with one and two hidden
layers (it compiles once per dtype and depth), the Elman RNN's, the LSTM's and
the GRU's compiled time loops, and the split matrix product. Each compile
lands in Numba's disk cache (``NUMBA_CACHE_DIR`` when set), where a later run with
the same types loads it in a fraction of a second instead of compiling for
seconds. Use it when building an image or an environment that many runs will
start from; the test suite starts it in a background process so that its
compiles overlap the tests that need none.

Importing this module does not import Numba; compiling does (it needs Numba).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .backends import cpu_status
from .backends.numba.background import compiles_in_foreground
from .nn.gated_recurrent import GRU, LSTM
from .nn.layers import Linear
from .nn.model import Sequential, mlp
from .nn.recurrent import RNN
from .training.trainer import Trainer

PATHS = ("rnn", "mlp-1", "lstm", "mlp-2", "gru", "product")
DTYPES = ("float32", "float64")
#: (path, dtype) in the order they are compiled: float32 (the default) mostly first, and
#: otherwise the order in which this project's test run first meets them, so that the run's
#: background warm-up is ahead of the tests.
ORDER = (("rnn", "float32"), ("mlp-1", "float32"), ("lstm", "float32"), ("mlp-1", "float64"),
         ("mlp-2", "float32"), ("rnn", "float64"), ("lstm", "float64"), ("mlp-2", "float64"),
         ("gru", "float32"), ("gru", "float64"), ("product", "float32"), ("product", "float64"))


def _sequence_model(layer, dtype: str) -> Sequential:
    return Sequential([layer, Linear(3)], n_inputs=4, device="numba", dtype=dtype, seed=0)


def _train(model, samples_shape: tuple) -> None:
    """A few batches of Adam on random data: every pass of the model's step compiles."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal(samples_shape)
    y = rng.integers(0, 3, samples_shape[0])
    Trainer(model, optimizer="adam", batch_size=8, verbose=0).fit(X, y, epochs=1)


def _split_product(dtype: str) -> None:
    """One product large enough for the backend to split its rows across threads."""
    from .backends.numba.backend import MIN_SPLIT_ROWS, NumbaBackend

    backend = NumbaBackend()
    A = np.ones((MIN_SPLIT_ROWS, MIN_SPLIT_ROWS), dtype)
    with backend.step_context():
        backend.gemm(A, A)


def warm_path(path: str, dtype: str) -> None:
    """Compile one of :data:`PATHS` for one dtype (a no-op where it is cached already)."""
    if path == "product":
        _split_product(dtype)
    elif path.startswith("mlp-"):
        hidden = [5] * int(path.split("-")[1])
        _train(mlp(4, hidden, 3, device="numba", dtype=dtype, seed=0), (32, 4))
    else:
        layer = {"rnn": RNN, "lstm": LSTM, "gru": GRU}[path](6)
        _train(_sequence_model(layer, dtype), (32, 3, 4))


def warm(paths=PATHS, dtypes=DTYPES, log=None) -> None:
    """Compile ``paths`` for every dtype in ``dtypes``, in the order of :data:`ORDER`;
    ``log(line)`` reports each with its time."""
    with compiles_in_foreground():
        for path, dtype in ORDER:
            if path in paths and dtype in dtypes:
                started = time.perf_counter()
                warm_path(path, dtype)
                if log is not None:
                    log(f"{path} {dtype}: {time.perf_counter() - started:.1f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpubackprop.precompile",
        description="Compile the fused CPU backend's usual signatures into Numba's disk cache.")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help=f"comma-separated, from {', '.join(PATHS)} (default: all)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="default: %(default)s")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    paths = [path for path in args.paths.split(",") if path]
    dtypes = [dtype for dtype in args.dtypes.split(",") if dtype]
    unknown = [p for p in paths if p not in PATHS] + [d for d in dtypes if d not in DTYPES]
    if unknown:
        parser.error(f"unknown path or dtype: {', '.join(unknown)}")
    status = cpu_status()
    if not status.fused:
        print(f"gpubackprop.precompile: nothing to compile: {status.reason}", file=sys.stderr)
        return 1
    warm(paths, dtypes, log=None if args.quiet else print)
    return 0


if __name__ == "__main__":
    sys.exit(main())
