"""What machine a benchmark ran on: CPU, GPU, library versions, BLAS, TF32, date."""

from __future__ import annotations

import datetime
import os
import platform

import numpy as np

from .backends import cpu_status, get_backend, gpu_status
from .cpu_threads import WAIT_POLICY, usable_cpus


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> dict:
    """NumPy's BLAS as built and as loaded: name, version, threads in use, kernels."""
    info: dict = {}
    try:
        build = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info.update(name=build.get("name"), version=build.get("version"),
                    config=build.get("openblas configuration"))
    except Exception:  # show_config's layout is not a stable API
        pass
    try:
        from threadpoolctl import threadpool_info
        pools = [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]
        info["threads"] = [pool.get("num_threads") for pool in pools]
        info["loaded"] = [f"{pool.get('internal_api')} {pool.get('version')} "
                          f"({pool.get('architecture')})" for pool in pools]
        # The kernels each BLAS runs (OPENBLAS_CORETYPE can force older ones).
        info["kernels"] = sorted({str(pool.get("architecture")) for pool in pools})
    except ImportError:
        pass
    return info


def cpu_step_blas() -> str:
    """Which BLAS the fused CPU backend's parallel step calls; see ``backends/numba/blas.py``."""
    from .backends.numba import blas as cpu_blas

    return "NumPy's OpenBLAS" if cpu_blas.NUMPY_BLAS else "np.dot in Numba (SciPy's BLAS)"


def cupy_tf32() -> bool | None:
    """Whether CuPy's float32 GEMMs use TF32, read from CuPy's compute type; None without a GPU.

    The compute type starts from ``CUPY_TF32`` but is changed by ``set_tf32``
    (the parity check turns TF32 off), so the environment alone can be wrong.
    """
    if not gpu_status().usable:
        return None
    return get_backend("gpu").tf32_enabled()


def machine_info(torch_module=None) -> dict:
    """A JSON-serialisable description of this machine and the software measured.

    Parameters
    ----------
    torch_module : module, optional
        PyTorch when it was benchmarked, for its version and TF32 state.
    """
    status = gpu_status()
    cpu = cpu_status()
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": usable_cpus(),
        "thread_environment": {name: os.environ.get(name) for name in
                               (*WAIT_POLICY, "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_info(),
        "numba": cpu.numba_version,
        "cpu_backend": "numba" if cpu.fused else "numpy",
        "cpu_step_blas": cpu_step_blas() if cpu.fused else None,
        "gpu": status.device_name,
        "gpu_status": status.reason,
        "cupy": status.cupy_version,
        "cuda_runtime": status.cuda_runtime,
        "cuda_driver": status.cuda_driver,
        "cuda_driver_note": status.driver_note,
        "cupy_tf32": cupy_tf32(),
    }
    try:
        import sklearn
        info["scikit_learn"] = sklearn.__version__
    except ImportError:
        info["scikit_learn"] = None
    info.update(torch_facts(torch_module))
    return info


def torch_facts(torch_module=None) -> dict:
    """PyTorch's version, thread count and TF32 setting (version None without it)."""
    if torch_module is None:
        return {"torch": None}
    return {"torch": torch_module.__version__, "torch_threads": torch_module.get_num_threads(),
            "torch_tf32": bool(torch_module.backends.cuda.matmul.allow_tf32)}
