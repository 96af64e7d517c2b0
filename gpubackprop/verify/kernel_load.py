"""How long the fused kernels take to compile the first time, and to load once compiled.

Works with any library that has ``KernelLibrary.get(name, dtype)``: the CuPy
:class:`~gpubackprop.backends.cupy.library.KernelLibrary` (NVRTC; point
``CUPY_CACHE_DIR`` at an empty folder to time a true first compile) or the
host build of the emulation.
"""

from __future__ import annotations

import time
from typing import Callable

from ..backends.cupy.library import CTYPES, KERNEL_FILES


def time_kernel_loads(make_library: Callable[[], object]) -> dict:
    """Time two fresh libraries: the first compiles, the second finds the compiled code.

    For each library, the time to construct it, then per kernel file the time
    of the first ``get`` (which compiles or loads the file) and of the
    remaining ``get`` calls for every kernel and dtype of the file.

    Returns
    -------
    dict
        ``{"first": pass, "warm": pass}``, each pass ``{"construct_s": float,
        "files": {filename: {"first_get_s": float, "other_gets_s": float,
        "kernels": int}}, "total_s": float}``.
    """
    return {"first": _one_pass(make_library), "warm": _one_pass(make_library)}


def _one_pass(make_library) -> dict:
    started = time.perf_counter()
    library = make_library()
    result = {"construct_s": time.perf_counter() - started, "files": {}}
    for filename, names in KERNEL_FILES.items():
        lookups = [(name, dtype) for name in names for dtype in CTYPES]
        began = time.perf_counter()
        library.get(*lookups[0])
        first = time.perf_counter() - began
        began = time.perf_counter()
        for name, dtype in lookups[1:]:
            library.get(name, dtype)
        result["files"][filename] = {"first_get_s": first,
                                     "other_gets_s": time.perf_counter() - began,
                                     "kernels": len(lookups)}
    result["total_s"] = time.perf_counter() - started
    return result
