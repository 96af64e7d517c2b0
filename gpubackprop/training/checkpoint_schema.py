"""What a checkpoint may hold: every field checked before anything is allocated.

A checkpoint is untrusted input. :func:`plan` reads its metadata (already
parsed JSON) and returns the unbuilt layers, the optimizer and the exact
name, shape and dtype of every array the arrays file must hold, derived from
the architecture alone; :func:`estimate` says what loading it will take in
memory. Nothing here allocates an array or runs compiled code, so a hostile
file fails here with a :class:`~gpubackprop.errors.DataFileError` that names
the field, before NumPy, Numba or CuPy sees a byte of it.

The schema follows the code it describes: layers and optimizers are rebuilt by
their own constructors and their ``config()`` must give back what the file
says; parameter shapes come from ``Layer.parameter_shapes``; optimizer state
from ``Optimizer.state_slots``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ..errors import DataFileError
from ..memory import (ArraySpec, Estimate, check_dimensions, optimizer_state_specs,
                      parameter_bytes)
from ..nn import gated_recurrent, recurrent  # noqa: F401 (register their layers in LAYER_TYPES)
from ..nn.layers import LAYER_TYPES, layer_from_config
from ..nn.model import planned_shapes
from ..nn.optim import OPTIMIZERS, STATE_DTYPE, STEP, STEP_STATE_KEY, optimizer_from_config
from ..validation import DTYPES, MAX_SEED
from .trainer import History

FORMAT = "gpubackprop-checkpoint"
FORMAT_VERSION = 1
MODEL_PREFIX = "model/"
OPTIMIZER_PREFIX = "optimizer/"
STEP_COUNT = "step_count"
#: The stem of the metadata file and of its arrays file, ``<stem>-<sha256[:16]>.npz``.
STEM = "checkpoint"
ARRAYS_FILE = re.compile(rf"{STEM}-[0-9a-f]{{16}}\.npz")
SHA256 = re.compile(r"[0-9a-f]{64}")
#: Largest metadata file read (the history of a long run is the bulk of it).
MAX_METADATA_BYTES = 256 << 20
MAX_LAYERS = 1000
#: Largest optimizer step count: exact as a float64, like the bias corrections use it.
MAX_STEPS = 2**53
#: Bytes an arrays file may hold beyond its arrays' data (zip and .npy headers).
ARCHIVE_OVERHEAD_PER_ARRAY = 4096
ARCHIVE_OVERHEAD = 1 << 16


@dataclass
class Plan:
    """A checkpoint's metadata, checked, as the objects it describes (unbuilt).

    Attributes
    ----------
    layers : list of Layer
        Constructed from their configurations, not built (no parameters yet).
    n_inputs, seed : int
    dtype : numpy.dtype
    optimizer : Optimizer or None
        Constructed from its configuration, without state.
    history : History or None
    arrays : dict of str to ArraySpec
        Every array the file may hold. Optimizer slots not created yet (an
        optimizer saved before its first step) may be absent.
    required : set of str
        The arrays that must be present.
    """

    layers: list
    n_inputs: int
    dtype: np.dtype
    seed: int
    optimizer: object
    history: History | None
    arrays: dict
    required: set


def _fail(where: str, message: str):
    raise DataFileError(f"checkpoint {where}: {message}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _same(a, b) -> bool:
    """Equal as JSON values: numbers by value (1 == 1.0), but 1 and True, or "x"
    and ["x"], differ."""
    if _is_number(a) and _is_number(b):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_round_trip(given: dict, rebuilt: dict, what: str, where: str) -> None:
    """Every field the file gives must be what the rebuilt object's config() says."""
    for key, value in given.items():
        if not _same(value, rebuilt.get(key)):
            _fail(where, f"{what} field {key!r} is {value!r}, which gpubackprop would "
                         f"not write (read as {rebuilt.get(key)!r})")


def check_top_level(metadata, where: str) -> None:
    """Format, version and the types of the fields every checkpoint has."""
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise DataFileError(f"{where} is not a gpubackprop checkpoint")
    if metadata.get("format_version") != FORMAT_VERSION:
        _fail(where, f"format version {metadata.get('format_version')!r}; this gpubackprop "
                     f"reads version {FORMAT_VERSION}")
    missing = [key for key in ("model", "arrays_file", "arrays_sha256", "arrays")
               if key not in metadata]
    if missing:
        _fail(where, f"lacks the entries {missing}")
    sha = metadata["arrays_sha256"]
    if not isinstance(sha, str) or not SHA256.fullmatch(sha):
        _fail(where, f"arrays_sha256 must be 64 lower-case hex digits, got {sha!r}")
    name = metadata["arrays_file"]
    # A bare file name in the checkpoint's folder: never a path elsewhere.
    if not isinstance(name, str) or not ARRAYS_FILE.fullmatch(name):
        _fail(where, f"arrays_file must name a file '{STEM}-<16 hex digits>.npz' in the "
                     f"same folder, got {name!r:.80}")
    for key in ("model", "arrays", "extra", "optimizer", "history"):
        value = metadata.get(key)
        optional = key in ("extra", "optimizer", "history")
        if not isinstance(value, dict) and not (optional and value is None):
            _fail(where, f"{key} must be a JSON object, got {type(value).__name__}")


def _layers(model: dict, where: str) -> list:
    layers = model.get("layers")
    if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_LAYERS:
        _fail(where, f"model.layers must be a list of 1 to {MAX_LAYERS} layers")
    built = []
    for i, config in enumerate(layers):
        if not isinstance(config, dict) or not isinstance(config.get("type"), str) or \
                config["type"] not in LAYER_TYPES:
            _fail(where, f"layer {i} must be an object whose type is one of "
                         f"{sorted(LAYER_TYPES)}, got {config!r:.80}")
        try:
            layer = layer_from_config(config)
        except (TypeError, ValueError, KeyError, RecursionError) as exc:
            _fail(where, f"layer {i} ({config['type']}) has an invalid configuration: {exc}")
        _check_round_trip(config, layer.config(), f"layer {i} ({config['type']})", where)
        built.append(layer)
    return built


def _optimizer(options, where: str):
    if options is None:
        return None
    name = options.get("name")
    if not isinstance(name, str) or name not in OPTIMIZERS:
        _fail(where, f"optimizer name must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    arguments = {key: value for key, value in options.items() if key != "name"}
    # Flags (nesterov) and choices (convention) are checked by the optimizer itself.
    named = {h.name for h in OPTIMIZERS[name].spec.hyperparameters
             if h.choices or isinstance(h.default, bool)}
    for key, value in arguments.items():
        if key not in named and value is not None and (
                not _is_number(value) or not math.isfinite(value)):
            _fail(where, f"optimizer field {key!r} must be a finite number or null, "
                         f"got {value!r}")
    try:
        # Settings an older checkpoint lacks take the values it was trained with.
        optimizer = optimizer_from_config(options)
    except (TypeError, ValueError) as exc:
        _fail(where, f"optimizer {name!r} has an invalid configuration: {exc}")
    _check_round_trip(options, optimizer.config(), "optimizer", where)
    return optimizer


def _history(data, where: str) -> History | None:
    if data is None:
        return None
    fields = History.__dataclass_fields__
    unknown = sorted(set(data) - set(fields))
    if unknown:
        _fail(where, f"history has unknown fields {unknown}")
    for key, values in data.items():
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            _fail(where, f"history.{key} must be a list of numbers")
    history = History.from_dict(data)
    epochs = history.epochs
    per_epoch = ("accuracy", "epoch_time", "lr")
    lengths = {key: len(getattr(history, key)) for key in per_epoch}
    validation = {key: len(getattr(history, key)) for key in ("val_loss", "val_accuracy")}
    if any(n != epochs for n in lengths.values()) or \
            any(n not in (0, epochs) for n in validation.values()) or \
            len(set(validation.values())) > 1 or len(history.loss) < epochs:
        _fail(where, f"history lists disagree on the number of epochs: epoch_loss has "
                     f"{epochs}, {lengths | validation}, loss {len(history.loss)}")
    return history


def plan(metadata, where: str) -> Plan:
    """Check ``metadata`` (parsed checkpoint.json) and describe what it asks for.

    Raises
    ------
    DataFileError
        A field has the wrong type or range, the layers or optimizer cannot
        be rebuilt from it, or its array index differs from what the
        architecture implies (names, shapes, dtypes).
    """
    check_top_level(metadata, where)
    model = metadata["model"]
    n_inputs, dtype, seed = model.get("n_inputs"), model.get("dtype"), model.get("seed", 0)
    if not _is_int(n_inputs) or n_inputs < 1:
        _fail(where, f"model.n_inputs must be a positive integer, got {n_inputs!r}")
    if dtype not in DTYPES:
        _fail(where, f"model.dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        _fail(where, f"model.seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    layers = _layers(model, where)
    dtype = np.dtype(dtype)
    shapes = planned_shapes(layers, n_inputs)
    try:
        check_dimensions(shapes.values(), f"checkpoint {where}")
    except ValueError as exc:
        raise DataFileError(str(exc)) from None
    arrays = {MODEL_PREFIX + name: ArraySpec(shape, dtype) for name, shape in shapes.items()}
    required = set(arrays)
    optimizer = _optimizer(metadata.get("optimizer"), where)
    if optimizer is not None:
        arrays.update({OPTIMIZER_PREFIX + key: spec for key, spec in
                       optimizer_state_specs(optimizer, shapes, dtype).items()})
        # The step state (older checkpoints: only the step count).
        arrays[OPTIMIZER_PREFIX + STEP_COUNT] = ArraySpec((), np.dtype(np.int64))
        arrays[OPTIMIZER_PREFIX + STEP_STATE_KEY] = ArraySpec((len(optimizer.rule.layout),),
                                                               STATE_DTYPE)
        index = metadata["arrays"] if isinstance(metadata["arrays"], dict) else {}
        required.add(OPTIMIZER_PREFIX + (STEP_STATE_KEY if OPTIMIZER_PREFIX + STEP_STATE_KEY
                                         in index else STEP_COUNT))
    history = _history(metadata.get("history"), where)
    _check_index(metadata["arrays"], arrays, required, where)
    return Plan(layers, n_inputs, dtype, seed, optimizer, history, arrays, required)


def _check_index(index: dict, arrays: dict, required: set, where: str) -> None:
    """The file's own list of arrays must be what the architecture implies."""
    missing = sorted(required - set(index))
    unexpected = sorted(set(index) - set(arrays))
    if missing or unexpected:
        _fail(where, f"its array index does not match its architecture: missing arrays "
                     f"{missing}, unexpected arrays {unexpected}")
    for name, entry in index.items():
        spec = arrays[name]
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list) or \
                not all(_is_int(d) for d in entry["shape"]) or \
                tuple(entry["shape"]) != spec.shape or entry.get("dtype") != spec.dtype.name:
            _fail(where, f"array {name} is listed as {entry!r:.120}; the architecture "
                         f"needs {spec.dtype.name} {spec.shape}")


def estimate(plan: Plan, advice: str = "the layer widths in the checkpoint") -> Estimate:
    """Memory that loading and then training the planned model will take."""
    params = parameter_bytes([spec.shape for name, spec in plan.arrays.items()
                              if name.startswith(MODEL_PREFIX)], plan.dtype.itemsize)
    state = sum(spec.nbytes for name, spec in plan.arrays.items()
                if name.startswith(OPTIMIZER_PREFIX))
    return Estimate({"parameters and gradients": 2 * params, "optimizer state": state,
                     "arrays read from the file": params + state}, advice)


def check_array(name: str, value: np.ndarray, spec: ArraySpec, where: str) -> None:
    """Values the compiled code may rely on: finite weights, a step count in range."""
    if value.dtype.kind == "f":
        finite = np.isfinite(value)
        if not finite.all():
            _fail(where, f"array {name} holds {int(value.size - finite.sum())} NaN or "
                         f"infinite values")
    elif name == OPTIMIZER_PREFIX + STEP_COUNT and not 0 <= int(value) <= MAX_STEPS:
        _fail(where, f"the optimizer's step count must be in [0, 2**53], got {int(value)}")
    if name == OPTIMIZER_PREFIX + STEP_STATE_KEY and value.ndim == 1 and value.size > STEP:
        step = float(value[STEP])
        if not (0 <= step <= MAX_STEPS and step == int(step)):
            _fail(where, f"the optimizer's step count must be an integer in [0, 2**53], "
                         f"got {step!r}")


def check_generator_state(state, where: str) -> dict:
    """A NumPy bit generator state (e.g. the trainer's shuffling), checked by NumPy itself.

    The state is set on a throwaway PCG64 and must read back unchanged (NumPy
    masks some out-of-range values silently).
    """
    generator = np.random.PCG64()
    try:
        generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        _fail(where, f"the shuffling generator's state is invalid: {exc}")
    if not _same(state, generator.state):
        _fail(where, "the shuffling generator's state is out of range")
    return state
