"""A ``cupy`` module backed by NumPy, just large enough for ``CupyBackend``.

Arrays are :class:`DeviceArray`, a NumPy subclass with CuPy's ``.get()`` and
``.data.ptr``; every NumPy function called through the module returns them,
so the backend's ``isinstance(X, cupy.ndarray)`` checks pass and its kernels
(not its fallbacks) run. Work is synchronous, so the stream has nothing to wait for.

NumPy functions called directly on a device array (``np.concatenate(X)``,
``np.mean(X)``) raise ``TypeError`` here, as CuPy refuses them. What this
cannot catch: NumPy ufuncs and ``np.asarray`` on a device array, which a
NumPy subclass cannot tell apart from the module's own calls.
"""

from __future__ import annotations

import threading
import types
from dataclasses import dataclass

import numpy as np


_inside = threading.local()


class DeviceArray(np.ndarray):
    """A NumPy array standing in for ``cupy.ndarray``.

    ``DeviceArray.host_reads`` counts the reads back to the host, each of which
    synchronises a real GPU: ``get()``, ``item()``, ``tolist()`` and
    ``float()``, ``int()`` or ``bool()`` of an array. ``DeviceArray.host_writes``
    counts the copies from the host: ``cupy.asarray`` or ``cupy.array`` of
    anything that is not already a device array.
    """

    host_reads = 0
    host_writes = 0

    def _read_back(self):
        DeviceArray.host_reads += 1
        return self.view(np.ndarray)

    def __float__(self):
        return float(self._read_back())

    def __int__(self):
        return int(self._read_back())

    def __bool__(self):
        return bool(self._read_back())

    def item(self, *args):
        return self._read_back().item(*args)

    def tolist(self):
        return self._read_back().tolist()

    def __array_function__(self, func, types, args, kwargs):
        if not getattr(_inside, "module_call", False):
            raise TypeError(f"numpy.{func.__name__} called on a device array; CuPy refuses "
                            f"this (use the backend's xp)")
        return super().__array_function__(func, types, args, kwargs)

    def get(self) -> np.ndarray:
        """A host copy, as ``cupy.ndarray.get()`` gives."""
        return np.array(self._read_back())

    @property
    def data(self):
        return _Pointer(self.ctypes.data)


@dataclass(frozen=True)
class _Pointer:
    ptr: int


def _on_device(value):
    if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
        return value.view(DeviceArray)
    if isinstance(value, tuple):
        return tuple(_on_device(v) for v in value)
    return value


def _wrap(function):
    def wrapped(*args, **kwargs):
        outer = getattr(_inside, "module_call", False)
        _inside.module_call = True
        try:
            return _on_device(function(*args, **kwargs))
        finally:
            _inside.module_call = outer
    wrapped.__name__ = getattr(function, "__name__", "function")
    return wrapped


class _RandomState:
    def __init__(self, seed: int):
        self._state = np.random.RandomState(seed % 2 ** 32)

    def permutation(self, n: int) -> DeviceArray:
        return _on_device(self._state.permutation(n))


class _Stream:
    def synchronize(self) -> None:
        """Nothing to wait for: every emulated launch returns when it is done."""


def make_module() -> types.ModuleType:
    """A fresh ``cupy`` stand-in module."""
    module = types.ModuleType("cupy", __doc__)
    module.ndarray = DeviceArray
    module.random = types.SimpleNamespace(RandomState=_RandomState)
    module.cuda = types.SimpleNamespace(get_current_stream=_Stream)

    def numpy_attribute(name):
        value = getattr(np, name)
        if callable(value) and not isinstance(value, type):
            return _wrap(value)
        return value

    def from_host(function):
        def copy(value, *args, **kwargs):
            if not isinstance(value, DeviceArray):
                DeviceArray.host_writes += 1
            return function(value, *args, **kwargs)
        return copy

    module.asarray, module.array = (from_host(_wrap(f)) for f in (np.asarray, np.array))
    module.__getattr__ = numpy_attribute
    return module
