"""A ``cupy`` module backed by NumPy, just large enough for ``CupyBackend``.

Arrays are :class:`DeviceArray`, a NumPy subclass with CuPy's ``.get()`` and
``.data.ptr``; every NumPy function called through the module returns them,
so the backend's ``isinstance(X, cupy.ndarray)`` checks pass and its kernels
(not its fallbacks) run. Work is synchronous, so the stream has nothing to wait for.

NumPy functions called directly on a device array (``np.concatenate(X)``,
``np.mean(X)``) raise ``TypeError`` here, as CuPy refuses them. ``asarray``,
``array`` and ``ascontiguousarray`` of a host array copy it, as CuPy copies it
to the device. A keyword argument the CuPy function does not take
(:data:`KEYWORDS`, read from CuPy 14's signatures) is a ``TypeError``, as in
CuPy. What this cannot catch: NumPy ufuncs and ``np.asarray`` on a device
array, which a NumPy subclass cannot tell apart from the module's own calls.

Streams and CUDA graphs: ``cuda.Stream(non_blocking=True)``, ``with stream:``
makes it current, ``stream.begin_capture()`` starts recording and
``stream.end_capture()`` returns a :class:`Graph` whose ``launch()`` replays
what was recorded. While the current stream captures, nothing runs: module
functions with ``out=``, ufuncs with ``out=`` (also through methods such as
``X.sum(axis=0, out=b)``), device-to-device assignments, kernel launches
(:func:`record`, called by ``host_kernels``) and graph launches are recorded
with the arrays they were given, as a graph records addresses. What CUDA's
capture forbids, or what a graph could not hold, raises :class:`CaptureError`
(and invalidates the capture, as CUDA does): an allocation (counted as
``DeviceArray.allocations`` counts), a read back to the host, a copy from the
host, a synchronisation, ``matmul`` (CuPy's cuBLAS wrappers refuse a
capturing stream, cupy#6290). ``cuda.MemoryHook`` hooks see every counted
allocation (``malloc_preprocess``), as CuPy's see its pool's.

Allocations while recording, from a private pool: inside
``with cuda.using_allocator(pool.malloc):`` for a ``cuda.MemoryPool()``, a
capture may allocate, as CUDA lets a capture allocate memory that its graph
then owns. Such an operation (a ufunc or module function without ``out=``,
fancy indexing, ``copy``, ``astype``, a copying ``reshape``, ``argmax``) is
evaluated once while recording, only for the shape and dtype of its new
array, and recorded as recomputing that array in place, so replays rewrite
the same addresses; ``pool.allocations`` counts them. Any other way of making
an array while recording raises :class:`CaptureError` (the emulation cannot
record it), so nothing the graph depends on is left out of it silently.
"""

from __future__ import annotations

import contextlib
import threading
import types
from dataclasses import dataclass

import numpy as np

from . import fake_nccl

_inside = threading.local()

_CREATION = ("shape", "dtype", "order")
_LIKE = ("dtype", "order", "subok", "shape")
_JOIN = ("tup", "axis", "out", "dtype", "casting")
_REDUCTION = ("a", "axis", "dtype", "out", "keepdims")
#: The keyword arguments CuPy 14 takes, by function (from its signatures), for the
#: functions the backends call; any other function is refused every keyword, until
#: its CuPy signature is added here.
KEYWORDS: dict[str, tuple[str, ...]] = {
    "zeros": _CREATION, "empty": _CREATION, "ones": _CREATION,
    "empty_like": ("prototype",) + _LIKE, "zeros_like": ("a",) + _LIKE,
    "ones_like": ("a",) + _LIKE,
    "stack": _JOIN, "concatenate": _JOIN,
    "array": ("obj", "dtype", "copy", "order", "subok", "ndmin", "blocking"),
    "asarray": ("a", "dtype", "order", "copy", "blocking"),
    "ascontiguousarray": ("a", "dtype"),
    "arange": ("start", "stop", "step", "dtype"),
    "may_share_memory": ("a", "b", "max_work"),
    "argsort": ("a", "axis", "kind"),
    "take": ("a", "indices", "axis", "out"),
    "sum": _REDUCTION, "mean": _REDUCTION, "argmax": _REDUCTION,
    "matmul": ("axes", "axis", "keepdims", "casting", "dtype", "signature", "order", "out"),
}
#: What every CuPy ufunc (``cupy.multiply``, ``cupy.exp``, ...) takes; NumPy's
#: ``where=``, ``order=`` and ``subok=`` it refuses ("Wrong arguments").
UFUNC_KEYWORDS = ("out", "dtype", "casting")
#: Functions that copy a host (NumPy) array to the device rather than alias it.
TO_DEVICE = ("array", "asarray", "ascontiguousarray")


class DeviceArray(np.ndarray):
    """A NumPy array standing in for ``cupy.ndarray``.

    ``DeviceArray.host_reads`` counts the reads back to the host, each of which
    synchronises a real GPU: ``get()``, ``item()``, ``tolist()`` and
    ``float()``, ``int()`` or ``bool()`` of an array. ``DeviceArray.host_writes``
    counts the copies from the host: a :data:`TO_DEVICE` function
    (``cupy.asarray`` ...) of anything that is not already a device array, and a
    host array assigned into a device array. ``DeviceArray.allocations`` counts
    the arrays made with memory of their own (see :func:`_count_new`): results
    of ufuncs and operators without ``out=``, of module functions, of fancy
    indexing, ``copy()`` and ``astype()``; views and ``out=`` results are not
    allocations.
    """

    host_reads = 0
    host_writes = 0
    allocations = 0

    def _read_back(self):
        _refuse_while_capturing("a read back to the host")
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
        # The function's own ufuncs are not counted: its result is, once.
        outer = getattr(_inside, "counted", False)
        _inside.counted = True
        try:
            result = super().__array_function__(func, types, args, kwargs)
        finally:
            _inside.counted = outer
        _count_new(result, (*args, *kwargs.values()))
        return result

    def __array_wrap__(self, array, context=None, return_scalar=False):
        # NumPy calls this on a ufunc's (or an operator's) result; ``context`` holds its
        # inputs and outputs, and is None for a reduction without ``out=``.
        _count_new(array, () if context is None else context[1])
        return super().__array_wrap__(array, context, return_scalar)

    def __array_finalize__(self, obj):
        if self.base is None and _recording() is not None and not _evaluating():
            _refuse_while_capturing("an array made by an operation the emulation cannot record")

    def __getitem__(self, key):
        def compute():
            result = super(DeviceArray, self).__getitem__(key)
            _count_new(result, (self,))
            return result
        return _produce(compute, (self,))

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
            _refuse_while_capturing("a copy from the host")
            DeviceArray.host_writes += 1
        if _recording() is not None:
            record(lambda: np.ndarray.__setitem__(self, key, value))
            return
        super().__setitem__(key, value)

    def copy(self, *args, **kwargs):
        return self._new_array(np.ndarray.copy, args, kwargs)

    def astype(self, *args, **kwargs):
        return self._new_array(np.ndarray.astype, args, kwargs)

    def reshape(self, *args, **kwargs):
        return self._new_array(np.ndarray.reshape, args, kwargs)

    def argmax(self, *args, **kwargs):
        return self._new_array(np.ndarray.argmax, args, kwargs)

    def _new_array(self, method, args, kwargs):
        """``method(self, ...)``, counted when it allocates (recorded while capturing)."""
        def compute():
            result = _on_device(method(self, *args, **kwargs))
            _count_new(result, (self,))
            return result
        return _produce(compute, (self,))

    def get(self) -> np.ndarray:
        """A host copy, as ``cupy.ndarray.get()`` gives."""
        return np.array(self._read_back())

    @property
    def data(self):
        return _Pointer(self.ctypes.data)


def _arrays(values):
    """The ndarrays among ``values``, looking into lists and tuples (``stack([...])``)."""
    for value in values:
        if isinstance(value, np.ndarray):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from _arrays(value)


def _count_new(result, sources) -> None:
    """Count each array of ``result`` that shares no memory with ``sources`` as an allocation."""
    if getattr(_inside, "counted", False) or _evaluating():
        return
    sources = [source.view(np.ndarray) for source in _arrays(sources)]
    for array in _arrays(result if isinstance(result, tuple) else (result,)):
        array = array.view(np.ndarray)
        if not any(np.may_share_memory(array, source) for source in sources):
            DeviceArray.allocations += 1
            for hook in list(_hooks().values()):
                hook.malloc_preprocess(device_id=0, size=array.nbytes, mem_size=array.nbytes)
            _refuse_while_capturing("an allocation")


@dataclass(frozen=True)
class _Pointer:
    ptr: int


def _on_device(value):
    if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
        return value.view(DeviceArray)
    if isinstance(value, tuple):
        return tuple(_on_device(v) for v in value)
    return value


def _wrap(function, name: str):
    allowed = UFUNC_KEYWORDS if isinstance(function, np.ufunc) else KEYWORDS.get(name, ())

    def wrapped(*args, **kwargs):
        refused = sorted(set(kwargs) - set(allowed))
        if refused:
            raise TypeError(f"cupy.{name} does not take the keyword argument(s) "
                            f"{', '.join(refused)} (CuPy 14 takes: {', '.join(allowed) or 'none'})")
        if name in TO_DEVICE:
            # CuPy copies host data to the device: writes to either side stay apart.
            args = tuple(_host_copy(value) for value in args)
            kwargs = {key: _host_copy(value) for key, value in kwargs.items()}
        if _recording() is not None and not _evaluating():
            if name == "matmul":
                _refuse_while_capturing("a cuBLAS call through CuPy (cupy#6290: its "
                                        "cublas.setStream refuses a capturing stream)")
            if kwargs.get("out") is not None:
                record(lambda: wrapped(*args, **kwargs))
                return kwargs["out"]
            return _produce(lambda: wrapped(*args, **kwargs), (*args, *kwargs.values()),
                            refill=name not in ("empty", "empty_like"))
        outer = getattr(_inside, "module_call", False)
        _inside.module_call = True
        try:
            result = function(*args, **kwargs)
        finally:
            _inside.module_call = outer
        if not any(isinstance(a, DeviceArray) for a in _arrays((*args, *kwargs.values()))):
            # No device array took part, so no override counted it: a creation (empty, zeros).
            _count_new(result, (*args, *kwargs.values()))
        return _on_device(result)
    wrapped.__name__ = name
    return wrapped


def _host_copy(value):
    """A copy of ``value`` when it is a host (NumPy) array, else ``value`` itself.

    Laid out as CuPy lays out a host array it copies (``cupy.array``, order "K"): in
    Fortran order when the array is Fortran- and not C-contiguous, else in C order.
    """
    if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
        return value.copy(order="F" if value.flags.fnc else "C")
    return value


class _RandomState:
    """``cupy.random.RandomState``: each one is a cuRAND generator, counted in ``created``."""

    created = 0

    def __init__(self, seed: int):
        _RandomState.created += 1
        self._state = np.random.RandomState(seed % 2 ** 32)

    def permutation(self, n: int) -> DeviceArray:
        return _on_device(self._state.permutation(n))


class CaptureError(RuntimeError):
    """What CUDA answers an operation that stream capture forbids (it invalidates the capture)."""


def _recording():
    """The list the current stream records into, or None when it is not capturing."""
    stream = getattr(_inside, "stream", None)
    return None if stream is None else stream._recorded


def capturing() -> bool:
    """Whether the current stream is recording a CUDA graph."""
    return _recording() is not None


def record(work) -> None:
    """Add ``work`` (a function of no arguments) to the capture of the current stream."""
    _recording().append(work)


def _refuse_while_capturing(what: str) -> None:
    stream = getattr(_inside, "stream", None)
    if stream is not None and stream._recorded is not None:
        stream._recorded = None
        del DeviceArray.__array_ufunc__
        raise CaptureError(f"{what} while stream {stream.ptr} captures a CUDA graph "
                           f"(cudaErrorStreamCaptureUnsupported; the capture is invalidated)")


def _recorded_ufunc(self, ufunc, method, *inputs, **kwargs):
    """``DeviceArray.__array_ufunc__`` during capture: record a ufunc that has ``out=``;
    one without it allocates (see :func:`_produce`)."""
    out = kwargs.get("out")
    if method == "at":  # in place on its first input: recorded as a kernel writing it
        if _evaluating():
            ufunc.at(*(x.view(np.ndarray) if isinstance(x, DeviceArray) else x for x in inputs))
        else:
            record(lambda: ufunc.at(*inputs))
        return None
    if out is None or all(o is None for o in out):
        kwargs.pop("out", None)
        plain = tuple(x.view(np.ndarray) if isinstance(x, DeviceArray) else x for x in inputs)

        def compute():
            result = getattr(ufunc, method)(*plain, **kwargs)
            return tuple(map(_as_device_array, result)) if isinstance(result, tuple) else \
                _as_device_array(result)
        if _evaluating():
            return compute()
        return _produce(compute, (),
                        what=f"an allocation (numpy.{ufunc.__name__}.{method} without out=)")
    if _evaluating():
        getattr(ufunc, method)(*(x.view(np.ndarray) if isinstance(x, DeviceArray) else x
                                 for x in inputs),
                               out=tuple(o.view(np.ndarray) for o in out),
                               **{k: v for k, v in kwargs.items() if k != "out"})
        return out[0] if len(out) == 1 else out
    record(lambda: getattr(ufunc, method)(*inputs, **kwargs))
    return out[0] if len(out) == 1 else out


def _evaluating() -> bool:
    """Whether an allocating operation is being evaluated for its shape while recording."""
    return getattr(_inside, "evaluating", False)


def _private_pool():
    """The :class:`_MemoryPool` whose ``malloc`` is this thread's allocator, or None."""
    allocator = getattr(_inside, "allocator", None)
    return getattr(allocator, "__self__", None)


def _produce(compute, sources, refill: bool = True, what: str = "an allocation"):
    """``compute()``; while recording, a new array it makes is allowed from a private pool.

    The operation is evaluated once now (on whatever the arrays hold: only
    the shape and dtype of its result matter) and recorded as recomputing
    its new arrays in place (``refill``; not for ``empty``, whose contents
    are undefined anyway), so a replay writes the addresses recorded.
    """
    if _recording() is None or _evaluating():
        return compute()
    _inside.evaluating = True
    try:
        with np.errstate(all="ignore"):
            result = compute()
    finally:
        _inside.evaluating = False
    # A graph writes arrays: a NumPy scalar result (``argmax()``) becomes a 0-d one.
    result = tuple(map(_as_device_array, result)) if isinstance(result, tuple) else \
        _as_device_array(result)
    plain_sources = [source.view(np.ndarray) for source in _arrays(sources)]
    results = result if isinstance(result, tuple) else (result,)
    new = [array for array in _arrays(results)
           if not any(np.may_share_memory(array.view(np.ndarray), source)
                      for source in plain_sources)]
    if not new:
        return result
    pool = _private_pool()
    if pool is None:
        _refuse_while_capturing(what)
    DeviceArray.allocations += len(new)
    pool.allocations += len(new)
    for array in new:
        for hook in list(_hooks().values()):
            hook.malloc_preprocess(device_id=0, size=array.nbytes, mem_size=array.nbytes)
    if refill:
        record(lambda: _refill(results, compute))
    return result


def _as_device_array(value):
    """``value`` as a :class:`DeviceArray` (a NumPy scalar as a 0-d one), or unchanged."""
    if isinstance(value, np.generic):
        return np.asarray(value).view(DeviceArray)
    return _on_device(value)


def _refill(results: tuple, compute) -> None:
    """Recompute what :func:`_produce` recorded into the arrays it made then (a graph
    writes them in place: the recomputation's own arrays are not counted)."""
    outer = _evaluating()
    _inside.evaluating = True
    try:
        fresh = compute()
    finally:
        _inside.evaluating = outer
    for kept, value in zip(results, fresh if isinstance(fresh, tuple) else (fresh,)):
        if isinstance(kept, np.ndarray):
            np.copyto(kept.view(np.ndarray), np.asarray(value))


class Graph:
    """What a capture recorded; ``launch()`` runs it again."""

    def __init__(self, work: list):
        self._work = tuple(work)
        self.launches = 0

    def launch(self, stream=None) -> None:
        if _recording() is not None:
            record(lambda: self.launch(stream))
            return
        self.launches += 1
        for work in self._work:
            work()


class _Stream:
    """A CUDA stream; the null stream is current unless ``with stream:`` says otherwise."""

    _count = 0

    def __init__(self, null: bool = False, non_blocking: bool = False):
        _Stream._count += 1
        self.ptr = 0 if null else _Stream._count
        self._recorded = None
        self._outer = []

    def __enter__(self):
        self._outer.append(getattr(_inside, "stream", None))
        _inside.stream = self
        return self

    def __exit__(self, *exc):
        _inside.stream = self._outer.pop()
        return False

    def begin_capture(self, mode=None) -> None:
        if self.ptr == 0:
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if "__array_ufunc__" in vars(DeviceArray):
            raise RuntimeError("the emulation records one capture at a time")
        self._recorded = []
        DeviceArray.__array_ufunc__ = _recorded_ufunc

    def end_capture(self) -> Graph:
        if self._recorded is None:
            raise CaptureError("cudaErrorStreamCaptureInvalidated: the capture was "
                               "invalidated by an operation it forbids, or never begun")
        work, self._recorded = self._recorded, None
        del DeviceArray.__array_ufunc__
        return Graph(work)

    def is_capturing(self) -> bool:
        return self._recorded is not None

    def synchronize(self) -> None:
        """Nothing to wait for: every emulated launch returns when it is done."""
        _refuse_while_capturing("a synchronisation")


_NULL_STREAM = _Stream(null=True)


def _current_stream() -> _Stream:
    stream = getattr(_inside, "stream", None)
    return _NULL_STREAM if stream is None else stream


def _hooks() -> dict:
    if not hasattr(_inside, "hooks"):
        _inside.hooks = {}
    return _inside.hooks


class _MemoryHook:
    """``cupy.cuda.MemoryHook``: ``with hook:`` installs it for this thread."""

    name = "MemoryHook"

    def __enter__(self):
        if self.name in _hooks():
            raise KeyError(f"memory hook {self.name} already exists")
        _hooks()[self.name] = self
        return self

    def __exit__(self, *exc):
        del _hooks()[self.name]

    def malloc_preprocess(self, **kwargs):
        pass


class _Device:
    """``cupy.cuda.Device(id)``; ``use()`` records the id in :attr:`current`."""

    current = 0
    count = 1

    def __init__(self, device: int = None):
        self.id = _Device.current if device is None else int(device)
        if not 0 <= self.id < _Device.count:
            raise RuntimeError(f"cudaErrorInvalidDevice: device {self.id} of {_Device.count}")

    def use(self) -> None:
        _Device.current = self.id


def _host_memory_info() -> tuple:
    """(free, total) bytes: the host's, since the emulated device's arrays live there."""
    from gpubackprop.memory import available_host_memory

    free = available_host_memory()
    return (free, free) if free is not None else (1 << 40, 1 << 40)


class _MemoryPool:
    """``cupy.cuda.MemoryPool``; ``allocations`` counts what a capture took from it."""

    def __init__(self):
        self.allocations = 0

    def malloc(self, size: int):
        raise NotImplementedError("the emulation allocates through NumPy; "
                                  "pass pool.malloc to cuda.using_allocator")

    def free_bytes(self) -> int:
        """The emulation keeps no pool: NumPy frees what it no longer needs."""
        return 0


@contextlib.contextmanager
def _using_allocator(allocator=None):
    """``cupy.cuda.using_allocator``: this thread allocates through ``allocator``."""
    outer = getattr(_inside, "allocator", None)
    _inside.allocator = allocator
    try:
        yield
    finally:
        _inside.allocator = outer


def make_module() -> types.ModuleType:
    """A fresh ``cupy`` stand-in module."""
    module = types.ModuleType("cupy", __doc__)
    module.ndarray = DeviceArray
    module.random = types.SimpleNamespace(RandomState=_RandomState)
    module.cuda = types.SimpleNamespace(
        get_current_stream=_current_stream, Stream=_Stream, MemoryHook=_MemoryHook,
        MemoryPool=_MemoryPool, using_allocator=_using_allocator,
        Device=_Device, nccl=fake_nccl.make_module(_current_stream),
        runtime=types.SimpleNamespace(memGetInfo=_host_memory_info,
                                      getDeviceCount=lambda: _Device.count))
    module.get_default_memory_pool = _MemoryPool

    def numpy_attribute(name):
        value = getattr(np, name)
        if callable(value) and not isinstance(value, type):
            value = _wrap(value, name)
        setattr(module, name, value)  # looked up once, as CuPy's own attributes are
        return value

    def from_host(function):
        def copy(value, *args, **kwargs):
            if not isinstance(value, DeviceArray):
                _refuse_while_capturing("a copy from the host")
                DeviceArray.host_writes += 1
            return function(value, *args, **kwargs)
        return copy

    for name in TO_DEVICE:
        setattr(module, name, from_host(_wrap(getattr(np, name), name)))
    module.__getattr__ = numpy_attribute
    return module
