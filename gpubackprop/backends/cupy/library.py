"""Find, compile and cache the fused CUDA kernels in ``kernels/*.cu`` beside this module.

Each ``.cu`` file is one CUDA C++ source of ``template <typename T, typename I>``
kernels (T the float type, I the index type); it may include the headers of
:data:`HEADER_FILES` (the activation codes generated from
:mod:`gpubackprop.nn.activations`, the optimizer
step-state indices from :mod:`gpubackprop.nn.update_rules`, the shared
activation functions), found through the include directory that
:func:`nvrtc_options` names. It is compiled by NVRTC through ``cupy.RawModule``
with an explicit list of name expressions (``"bias_act<float, int>"`` ...), on
the first request for one of its kernels and once per process and
:class:`KernelLibrary`; CuPy also keeps the binary in its on-disk cache.

The sources are looked up next to the package (``<repo>/kernels`` in a
source checkout or editable install) and then inside it
(``gpubackprop/kernels``, where the wheel puts them).
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Kernel names defined in each source file, in the order the file defines them.
KERNEL_FILES: dict[str, tuple[str, ...]] = {
    "activations.cu": ("bias_act", "act_backward", "rnn_step", "act_forward"),
    "softmax_xent.cu": ("softmax_xent", "step_result"),
    "optimizers.cu": ("optimizer_advance", "sgd_step", "momentum_step", "adam_step",
                      "rmsprop_step"),
    "recurrent_cells.cu": ("lstm_cell_forward", "lstm_cell_backward", "gru_cell_forward",
                           "gru_cell_backward"),
}

#: The C++ type each kernel template is instantiated for, by NumPy dtype.
CTYPES: dict[np.dtype, str] = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
#: The C++ index type (template argument I) of each kernel instantiation, by NumPy dtype:
#: 32-bit where every index fits (fast on NVIDIA GPUs), 64-bit past that.
INDEX_CTYPES: dict[np.dtype, str] = {np.dtype(np.int32): "int",
                                     np.dtype(np.int64): "long long"}

#: Headers the sources include, kept beside them: generated, the activation codes from
#: gpubackprop.nn.activations and the optimizer step-state indices from
#: gpubackprop.nn.update_rules; written, the activation functions shared by several files.
HEADER_FILES = ("gbp_activation_codes.h", "optimizer_state.cuh", "activation_functions.cuh")

#: Compiler flags of every kernel file. ``--std=c++17``: CuPy 14 puts its bundled
#: CCCL first on the include path, and CCCL refuses anything older. ``--fmad=false``
#: keeps a*b+c as two rounded operations, as in NumPy; these kernels are
#: memory-bound, so the fused multiply-add buys nothing.
COMPILE_OPTIONS = ("--std=c++17", "--fmad=false")


def nvrtc_options(directory: Path | None = None) -> tuple[str, ...]:
    """The options :class:`KernelLibrary` passes to ``cupy.RawModule`` for the sources in ``directory``.

    :data:`COMPILE_OPTIONS` and :func:`include_options` (``directory`` is
    :func:`kernel_dir` by default). The NVRTC and nvcc compile tests take
    theirs from here too. CuPy adds its own include directories, ``-ftz=true``
    and ``-arch=sm_XY`` of the device.
    """
    return (*COMPILE_OPTIONS, *include_options(directory))


def include_options(directory: Path | None = None) -> tuple[str, str]:
    """The options any compiler (NVRTC, nvcc, the host's) needs to include :data:`HEADER_FILES`.

    The include directory ``directory`` (:func:`kernel_dir` by default), and
    a macro holding a digest of the headers: CuPy's on-disk cache keys a
    binary by the source text and options only, so the digest makes a changed
    header recompile the sources that include it.
    """
    directory = Path(directory) if directory is not None else kernel_dir()
    digest = hashlib.sha256()
    for name in HEADER_FILES:
        digest.update((directory / name).read_bytes())
    return f"-I{directory}", f"-DGBP_HEADERS_SHA256={digest.hexdigest()[:16]}"


#: The largest index a 32-bit (``int``) kernel instantiation may form.
INT32_MAX = 2 ** 31 - 1


def index_dtype(n_elements: int, grid_threads: int, limit: int = INT32_MAX):
    """The index type to launch with: ``np.int32`` when every index fits, else ``np.int64``.

    A grid-stride loop over ``n_elements`` forms indices up to
    ``n_elements - 1 + grid_threads`` (its last step past the end); every other
    index the kernels form (rows, warps, row offsets) is smaller.

    Parameters
    ----------
    n_elements : int
        Elements of the largest array of the launch.
    grid_threads : int
        Threads of the launch's grid (its stride).
    limit : int
        The largest index allowed in 32 bits (lowered by tests to force 64 bits).
    """
    return np.int32 if n_elements - 1 + grid_threads <= limit else np.int64


def name_expression(name: str, dtype, index_dtype) -> str:
    """The template instantiation of kernel ``name`` for a float and an index dtype,
    e.g. ``"sgd_step<float, int>"``."""
    return f"{name}<{CTYPES[np.dtype(dtype)]}, {INDEX_CTYPES[np.dtype(index_dtype)]}>"


#: A kernel template's signature in a source file: its name and parameter list.
SIGNATURE = re.compile(r"template\s*<typename T, typename I>\s*__global__\s+void\s+(\w+)\s*"
                       r"\(([^)]*)\)")
#: The dtype of each named C type a kernel parameter may have besides ``T`` and ``I``.
C_DTYPES = {"float": np.float32, "double": np.float64, "int": np.int32, "long long": np.int64}


@dataclass(frozen=True)
class Parameter:
    """One kernel parameter: its C type with ``T`` and ``I`` unresolved, and its name."""

    ctype: str
    name: str

    @property
    def is_pointer(self) -> bool:
        return self.ctype.endswith("*")

    def resolved(self, ctype: str, index_ctype: str) -> str:
        """The C type with ``T`` and ``I`` replaced, e.g. ``float*`` or ``long long``."""
        return re.sub(r"\bI\b", index_ctype, re.sub(r"\bT\b", ctype, self.ctype))

    def dtype(self, dtype, index_dtype) -> np.dtype:
        """What the parameter holds (points to, for a pointer) in ``name<dtype, index_dtype>``."""
        base = self.ctype.rstrip("*")
        return np.dtype(dtype if base == "T" else index_dtype if base == "I" else C_DTYPES[base])


def signatures(directory: Path | None = None) -> dict[str, tuple[Parameter, ...]]:
    """Parameters of every kernel template, by kernel name, read from the sources."""
    directory = Path(directory or kernel_dir())
    found = {}
    for filename in KERNEL_FILES:
        for name, params in SIGNATURE.findall((directory / filename).read_text()):
            found[name] = tuple(_parameter(p) for p in params.split(","))
    return found


def _parameter(text: str) -> Parameter:
    words = " ".join(text.split()).replace(" *", "*").split(" ")
    ctype = " ".join(w for w in words[:-1] if w != "const")
    return Parameter(ctype, words[-1])


def name_expressions(filename: str) -> list[str]:
    """Every template instantiation of one source file, e.g. ``"sgd_step<float, int>"``."""
    return [name_expression(name, dtype, index) for name in KERNEL_FILES[filename]
            for dtype in CTYPES for index in INDEX_CTYPES]


def all_name_expressions() -> list[str]:
    """The name expressions of every kernel file, in :data:`KERNEL_FILES` order."""
    return [expr for filename in KERNEL_FILES for expr in name_expressions(filename)]


def kernel_dir() -> Path:
    """The folder holding every file of :data:`KERNEL_FILES` and :data:`HEADER_FILES`.

    ``kernels/`` beside this module.

    Raises
    ------
    FileNotFoundError
        When that folder lacks one of them (a broken installation).
    """
    folder = Path(__file__).resolve().with_name("kernels")
    missing = [name for name in (*KERNEL_FILES, *HEADER_FILES) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"the CUDA kernel sources {', '.join(missing)} are missing from "
                                f"{folder}; reinstall gpubackprop")
    return folder


class KernelLibrary:
    """Compiled kernels by name and dtype, each source file compiled at most once.

    Parameters
    ----------
    directory : Path, optional
        Folder of the ``.cu`` files; :func:`kernel_dir` when omitted.

    Attributes
    ----------
    compilations : int
        How many source files this library has compiled so far.
    """

    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory) if directory is not None else kernel_dir()
        self.signatures = signatures(self.directory)
        self.compilations = 0
        self._modules: dict = {}
        self._kernels: dict = {}
        self._lock = threading.Lock()

    def get(self, name: str, dtype, index_dtype=np.int64):
        """The ``cupy.RawKernel`` for ``name<T, I>``, compiling its file on first use.

        Parameters
        ----------
        name : str
            A kernel listed in :data:`KERNEL_FILES`.
        dtype : numpy dtype
            float32 or float64 (T).
        index_dtype : numpy dtype
            int32 or int64 (I): the type of the kernel's size arguments and indices.
        """
        key = (name, np.dtype(dtype), np.dtype(index_dtype))
        kernel = self._kernels.get(key)
        if kernel is None:
            with self._lock:
                kernel = self._kernels.get(key)
                if kernel is None:
                    module = self._module(_file_of(name))
                    kernel = module.get_function(name_expression(*key))
                    self._kernels[key] = kernel
        return kernel

    def array_dtypes(self, name: str, dtype, index_dtype) -> tuple:
        """What ``name<dtype, index_dtype>`` reads each of its array arguments as, in order.

        From the kernel's parameter types in its source: ``T*`` is ``dtype``,
        ``const double*`` float64 whatever ``T`` is, and so on.
        """
        return tuple(p.dtype(dtype, index_dtype) for p in self.signatures[name] if p.is_pointer)

    def _module(self, filename: str):
        module = self._modules.get(filename)
        if module is None:
            import cupy

            code = (self.directory / filename).read_text(encoding="utf-8")
            module = cupy.RawModule(code=code, options=nvrtc_options(self.directory),
                                    name_expressions=name_expressions(filename))
            module.compile()  # compile now, so errors name the file and are counted once
            self.compilations += 1
            self._modules[filename] = module
        return module


def _file_of(name: str) -> str:
    for filename, names in KERNEL_FILES.items():
        if name in names:
            return filename
    raise KeyError(f"no kernel named {name!r}; known: {', '.join(all_names())}")


def all_names() -> list[str]:
    """Every kernel template name, without the type argument."""
    return [name for names in KERNEL_FILES.values() for name in names]


@functools.lru_cache(maxsize=1)
def default_library() -> KernelLibrary:
    """The process-wide library the CuPy backend launches kernels from."""
    return KernelLibrary()
