"""Everything about the machine a self-test ran on, as one JSON-serialisable dict.

:func:`backend_status` is the part later steps depend on (is a GPU usable, does
Numba import) and is cheap; :func:`collect_environment` adds the CUDA stack
(driver, runtime, NVRTC, the headers CuPy compiles against, TF32), the
device, ``nvidia-smi``, PyTorch and the git commit of the tree. Every section
that fails records ``{"error": ...}`` instead of raising: this runs first on
machines nobody has seen yet.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

from ..backends import cpu_status, get_backend, gpu_status
from ..machine import machine_info

#: The CCCL libraries CuPy bundles for NVRTC, under ``cupy/_core/include/cupy/_cccl``.
CCCL_LIBRARIES = ("cub", "libcudacxx", "thrust")
#: Seconds any external command (``nvidia-smi``, ``git``) may take.
COMMAND_TIMEOUT = 30


def backend_status() -> dict:
    """``gpu_status()`` and ``cpu_status()`` as dicts: what the backends can use here."""
    return {"gpu_status": asdict(gpu_status()), "cpu_status": asdict(cpu_status())}


def collect_environment(repo: Path | None = None) -> dict:
    """The whole environment; see the module docstring.

    Parameters
    ----------
    repo : Path, optional
        The source tree whose git commit is recorded.
    """
    info = backend_status()
    torch = _safely(_import_torch)
    info["machine"] = _safely(lambda: machine_info(torch if _is_module(torch) else None))
    info["cuda"] = _safely(cuda_details) if info["gpu_status"]["cupy_version"] else None
    info["torch"] = _safely(lambda: torch_details(torch)) if _is_module(torch) else torch
    info["nvidia_smi"] = _safely(nvidia_smi)
    info["git"] = _safely(lambda: git_details(repo)) if repo is not None else None
    return info


def cuda_details() -> dict:
    """CuPy's view of the CUDA stack; the device's properties and TF32 when a GPU is usable."""
    import cupy

    details: dict = {"cupy": cupy.__version__,
                     "nvrtc": _safely(lambda: ".".join(map(str, cupy.cuda.nvrtc.getVersion()))),
                     "runtime": _safely(cupy.cuda.runtime.runtimeGetVersion),
                     "driver": _safely(cupy.cuda.runtime.driverGetVersion),
                     "cuda_path": _safely(cupy._environment.get_cuda_path),
                     "cccl": _safely(cccl_headers),
                     "CUPY_TF32": os.environ.get("CUPY_TF32"),
                     "CUPY_CACHE_DIR": os.environ.get("CUPY_CACHE_DIR")}
    details["show_config"] = _safely(_cupy_show_config)
    if gpu_status().usable:
        details["device"] = _safely(_device_properties)
        details["tf32"] = _safely(lambda: get_backend("gpu").tf32_enabled())
    return details


def cccl_headers() -> dict:
    """Which CCCL libraries CuPy's own include folder holds (NVRTC compiles against them)."""
    import cupy

    root = Path(cupy.__file__).parent / "_core" / "include" / "cupy" / "_cccl"
    return {"folder": str(root),
            "found": [name for name in CCCL_LIBRARIES if (root / name).is_dir()]}


def _cupy_show_config() -> str:
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        import cupy

        cupy.show_config()
    return text.getvalue()


def _device_properties() -> dict:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    return {"name": name.decode() if isinstance(name, bytes) else str(name),
            "compute_capability": f"{props['major']}.{props['minor']}",
            "memory_bytes": int(props["totalGlobalMem"]),
            "multiprocessors": int(props["multiProcessorCount"])}


def _import_torch():
    import torch

    return torch


def _is_module(value) -> bool:
    return hasattr(value, "__version__")


def torch_details(torch) -> dict:
    """PyTorch's version, its CUDA build and whether it sees a GPU."""
    details = {"version": torch.__version__, "cuda_build": torch.version.cuda,
               "cuda_available": bool(torch.cuda.is_available())}
    if details["cuda_available"]:
        details["device"] = torch.cuda.get_device_name(0)
    return details


def nvidia_smi() -> str | None:
    """The output of ``nvidia-smi``, or None where it is not installed."""
    path = shutil.which("nvidia-smi")
    if path is None:
        return None
    result = subprocess.run([path], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    return result.stdout + result.stderr


def git_details(repo: Path) -> dict | None:
    """The commit checked out in ``repo`` and whether the tree differs from it; None
    when ``repo`` is no git checkout (a copied tree, an installed package)."""
    if shutil.which("git") is None or not (Path(repo) / ".git").exists():
        return None

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, check=True).stdout.strip()

    changed = git("status", "--porcelain").splitlines()
    return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "changed_files": len(changed)}


def _safely(compute):
    """``compute()``, or ``{"error": "<type>: <message>"}`` when it raises."""
    try:
        return compute()
    except Exception as exc:  # any failure is evidence to record, never a reason to stop
        return {"error": f"{type(exc).__name__}: {exc}"}
