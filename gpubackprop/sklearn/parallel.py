"""Thread budgets for sweeps: each worker process gets its share of the CPU, no more.

A grid search runs many fits at once; if each also spreads its matrix
products (BLAS) and fused loops (Numba) over every core, ``k`` workers ask
for ``k`` times the machine and spend the difference waiting. joblib's
process backend (loky) already gives each worker ``cores // n_jobs`` threads
through these environment variables; a Dask cluster needs them set for its
worker processes, which :func:`local_cluster` does for a ``LocalCluster``
(on a real cluster, give the worker processes :func:`worker_environment`'s
variables, e.g. through Dask's ``distributed.nanny.pre-spawn-environ``).
"""

from __future__ import annotations

import os

from ..errors import InputError

#: The variables BLAS libraries and Numba read for their thread count when they load.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "BLIS_NUM_THREADS", "NUMBA_NUM_THREADS")


def thread_share(n_workers: int, threads_per_worker: int = 1, cores: int | None = None) -> int:
    """Threads each task may use: the cores divided among the concurrent tasks, at least 1."""
    cores = cores or os.cpu_count() or 1
    for value, name in ((n_workers, "n_workers"), (threads_per_worker, "threads_per_worker")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    return max(1, cores // (n_workers * threads_per_worker))


def worker_environment(threads: int) -> dict:
    """Environment variables that hold BLAS and Numba to ``threads`` threads in a new process."""
    return {name: str(int(threads)) for name in THREAD_VARIABLES}


def local_cluster(n_workers: int = 2, threads_per_worker: int = 1, **options):
    """A Dask ``LocalCluster`` of worker processes, each within its share of the cores.

    Parameters
    ----------
    n_workers : int
        Worker processes.
    threads_per_worker : int
        Tasks each worker runs at once.
    **options
        Passed to ``distributed.LocalCluster`` (e.g. ``dashboard_address=None``).

    Returns
    -------
    distributed.LocalCluster
        Use it with ``distributed.Client(cluster)`` and
        ``joblib.parallel_config(backend="dask")`` around ``search.fit``.
    """
    try:
        from distributed import LocalCluster
    except ImportError as exc:
        raise InputError(f"Dask sweeps need the distributed package ({exc}); install "
                         "gpubackprop[dask]") from None
    threads = thread_share(n_workers, threads_per_worker)
    env = {**worker_environment(threads), **options.pop("env", {})}
    return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                        processes=True, env=env, **options)


def worker_threads() -> dict:
    """The thread counts this process's BLAS and Numba will use (to check a worker's budget)."""
    from threadpoolctl import threadpool_info

    counts = {"blas": max((pool["num_threads"] for pool in threadpool_info()
                           if pool["user_api"] == "blas"), default=None)}
    try:
        import numba
        counts["numba"] = numba.config.NUMBA_NUM_THREADS
    except ImportError:
        counts["numba"] = None
    return counts
