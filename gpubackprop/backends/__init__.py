"""Backend selection and GPU detection, in one place.

``get_backend("auto")`` returns the CuPy backend when CuPy imports and a CUDA
device answers, and the CPU backend otherwise; :func:`gpu_status` keeps the
reason a GPU is not used, for ``gpubackprop info`` and for the error raised by
``get_backend("gpu")``. Importing this module never touches the GPU.

On the CPU there are two backends: ``"numpy"``, the reference, and
``"numba"``, the same with Numba-compiled fused loops for the elementwise
work. ``"cpu"`` takes the fused one when Numba imports, and NumPy otherwise;
:func:`cpu_status` says which and why.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ..errors import GPUUnavailableError, InputError
from .base import ACTIVATIONS, Backend
from .numpy.backend import NumpyBackend

DEVICES = ("auto", "cpu", "gpu")
#: Names of particular backends, accepted wherever a device is.
BACKEND_NAMES = ("numpy", "numba", "cupy")


@dataclass(frozen=True)
class GPUStatus:
    """Whether a CUDA GPU is usable through CuPy, and why not when it is not."""

    usable: bool
    reason: str
    device_name: str | None = None
    cupy_version: str | None = None
    cuda_runtime: int | None = None
    cuda_driver: int | None = None
    #: Set when the GPU is usable with a driver older than the runtime (same major version).
    driver_note: str | None = None


@functools.lru_cache(maxsize=1)
def gpu_status() -> GPUStatus:
    """Probe CuPy and the first CUDA device once per process.

    ``import cupy`` can succeed on a machine with no usable GPU and fail at
    the first allocation, so the probe allocates and computes a small array.
    """
    try:
        import cupy
    except ImportError as exc:
        return GPUStatus(False, f"CuPy is not installed ({exc}); "
                                "install gpubackprop[cuda12] or gpubackprop[cuda13]")
    except Exception as exc:  # a broken CuPy install raises more than ImportError
        return GPUStatus(False, f"CuPy failed to import: {type(exc).__name__}: {exc}")
    version = getattr(cupy, "__version__", None)
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        if not driver_library_loads():
            return GPUStatus(False, f"CuPy {version} is installed but there is no NVIDIA "
                                    f"driver ({DRIVER_LIBRARY} does not load)",
                             cupy_version=version)
        return GPUStatus(False, f"CuPy {version} found no usable CUDA driver or device: "
                                f"{type(exc).__name__}: {exc}", cupy_version=version)
    if count == 0:
        return GPUStatus(False, f"CuPy {version} is installed but no CUDA device is visible",
                         cupy_version=version)
    try:
        runtime = cupy.cuda.runtime.runtimeGetVersion()
        driver = cupy.cuda.runtime.driverGetVersion()
        refusal, note = _driver_check(driver, runtime)
        if refusal is not None:
            return GPUStatus(False, refusal, cupy_version=version, cuda_runtime=runtime,
                             cuda_driver=driver)
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        probe = cupy.arange(4, dtype=cupy.float32).sum()
        if float(probe) != 6.0:
            return GPUStatus(False, f"a test computation on {name} returned a wrong result",
                             device_name=name, cupy_version=version)
    except Exception as exc:
        return GPUStatus(False, f"CuPy {version} could not use the GPU: "
                                f"{type(exc).__name__}: {exc}", cupy_version=version)
    return GPUStatus(True, f"CUDA device 0 is {name}", device_name=name, cupy_version=version,
                     cuda_runtime=runtime, cuda_driver=driver, driver_note=note)


#: The NVIDIA driver's CUDA library, which every CUDA runtime loads.
DRIVER_LIBRARY = "libcuda.so.1"


def driver_library_loads() -> bool:
    """Whether the NVIDIA driver's CUDA library (:data:`DRIVER_LIBRARY`) can be loaded.

    Without it the CUDA runtime reports "driver version is insufficient",
    which reads as an old driver; :func:`gpu_status` says "no driver" instead.
    """
    import ctypes

    try:
        ctypes.CDLL(DRIVER_LIBRARY)
    except OSError:
        return False
    return True


def _driver_check(driver: int, runtime: int) -> tuple[str | None, str | None]:
    """(why the driver cannot run the runtime or None, a note to show or None).

    CUDA's minor-version compatibility lets a driver run any runtime of its own
    major version (13.0 runs 13.2): only a lower major version is refused here,
    and the probe computation in :func:`gpu_status` decides the rest. CuPy
    compiles kernels to cubin, which such a driver loads; PTX from a newer
    NVRTC (``CUPY_COMPILE_WITH_PTX=1``) it would refuse.
    """
    if driver // 1000 < runtime // 1000:
        return (f"the CUDA driver ({cuda_version_text(driver)}) is older than the major version "
                f"of the CUDA runtime CuPy was built for ({cuda_version_text(runtime)}); update "
                "the NVIDIA driver or install CuPy for CUDA "
                f"{driver // 1000}"), None
    if driver < runtime:
        return None, (f"the CUDA driver ({cuda_version_text(driver)}) is older than the runtime "
                      f"({cuda_version_text(runtime)}); it runs through CUDA minor-version "
                      "compatibility, so leave CUPY_COMPILE_WITH_PTX unset")
    return None, None


@dataclass(frozen=True)
class CPUStatus:
    """Whether the fused CPU kernels (Numba) are usable, and why not when they are not."""

    fused: bool
    reason: str
    numba_version: str | None = None


@functools.lru_cache(maxsize=1)
def cpu_status() -> CPUStatus:
    """Import Numba once per process; the fused CPU backend needs it."""
    try:
        import numba
    except ImportError as exc:
        return CPUStatus(False, f"Numba is not installed ({exc}); the CPU runs the NumPy "
                                "reference, with slower elementwise work")
    except Exception as exc:  # a Numba built for another NumPy raises more than ImportError
        return CPUStatus(False, f"Numba failed to import: {type(exc).__name__}: {exc}")
    return CPUStatus(True, f"fused CPU kernels compiled by Numba {numba.__version__}",
                     numba_version=numba.__version__)


def cuda_version_text(number: int) -> str:
    """CUDA's version number as text: 13020 -> "13.2"."""
    return f"{number // 1000}.{(number % 1000) // 10}"


@functools.lru_cache(maxsize=None)
def _numpy_backend() -> NumpyBackend:
    return NumpyBackend()


@functools.lru_cache(maxsize=None)
def _numba_backend() -> NumpyBackend:
    from .numba.backend import NumbaBackend
    return NumbaBackend()


def _cpu_backend() -> NumpyBackend:
    return _numba_backend() if cpu_status().fused else _numpy_backend()


@functools.lru_cache(maxsize=None)
def _cupy_backend() -> Backend:
    from .cupy.backend import CupyBackend
    return CupyBackend()


def get_backend(device: str | Backend = "auto") -> Backend:
    """Return the backend for ``device``.

    Parameters
    ----------
    device : {"auto", "cpu", "gpu", "numpy", "numba", "cupy"} or Backend
        ``"auto"`` takes the GPU when one is usable and the CPU otherwise;
        ``"cpu"`` takes the fused CPU backend when Numba imports and NumPy
        otherwise; ``"numpy"`` is always the reference. ``"gpu"`` (or
        ``"cupy"``) raises :class:`GPUUnavailableError` naming the cause when
        no GPU is usable, ``"numba"`` an :class:`InputError` when Numba does
        not import. A Backend instance is returned as it is.
    """
    if isinstance(device, Backend):
        return device
    key = str(device).lower()
    if key in ("cupy", "cuda"):
        key = "gpu"
    if key not in DEVICES + BACKEND_NAMES:
        raise InputError(f"unknown device {device!r}; valid names: "
                         f"{', '.join(DEVICES + BACKEND_NAMES)}")
    if key == "numpy":
        return _numpy_backend()
    if key == "numba":
        if not cpu_status().fused:
            raise InputError(f"the numba backend is not available: {cpu_status().reason}")
        return _numba_backend()
    if key == "cpu":
        return _cpu_backend()
    status = gpu_status()
    if status.usable:
        return _cupy_backend()
    if key == "gpu":
        raise GPUUnavailableError(f"no usable GPU: {status.reason}")
    return _cpu_backend()


def describe_auto_choice() -> str:
    """One sentence: which backend ``"auto"`` picks on this machine and why."""
    status = gpu_status()
    if status.usable:
        return f"cupy ({status.reason})"
    return f"{_cpu_backend().name} (no GPU: {status.reason})"


__all__ = ["ACTIVATIONS", "Backend", "CPUStatus", "GPUStatus", "NumpyBackend", "cpu_status",
           "cuda_version_text", "describe_auto_choice", "get_backend", "gpu_status"]
