"""The self-test's measurements that no ``gpubackprop`` command makes, one process each.

``python -m gpubackprop.verify.probes PROBE --json FILE [--backend NAME]``:

- ``environment``: :func:`~gpubackprop.verify.environment.collect_environment`
  (the backends' status is written first, so it survives a later crash);
- ``kernels``: first-compile and warm load times of every kernel file
  (``--backend gpu``: NVRTC through ``KernelLibrary``; ``cupy-emulated``: the
  host build);
- ``kernel-parity``: the fused kernels' rows of the parity table (NumPy against
  ``--backend`` for ``--dtype``), for the emulated backend, which
  ``gpubackprop check`` does not take and whose model rows take minutes;
- ``fused``: microseconds per fused call against its unfused chain.

Each prints what it measured and writes it as JSON; exit status 0 when the
probe ran (1 for a failing parity row), 2 when the backend is not usable.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

from ..errors import GpubackpropError
from ..fileio import write_json

PROBES = ("environment", "kernels", "kernel-parity", "fused")
#: ``--backend``: a backend's name, or the emulated CuPy backend (kernels, kernel-parity).
BACKENDS = ("gpu", "numba", "numpy", "cupy-emulated")


def resolve_backend(name: str, build_dir: Path):
    """The backend called ``name``; ``cupy-emulated`` is built in ``build_dir``."""
    if name == "cupy-emulated":
        from .emulation import emulated_backend

        return emulated_backend(build_dir)
    from ..backends import get_backend

    return get_backend(name)


def probe_environment(args, build_dir: Path) -> int:
    from .emulation import SOURCE_ROOT
    from .environment import backend_status, collect_environment

    write_json(args.json, backend_status())
    info = collect_environment(SOURCE_ROOT)
    write_json(args.json, info)
    for key in ("gpu_status", "cpu_status", "cuda", "torch", "git"):
        print(f"{key}: {info.get(key)}")
    if info.get("nvidia_smi"):
        print(info["nvidia_smi"])
    return 0


def probe_kernels(args, build_dir: Path) -> int:
    from .kernel_load import time_kernel_loads

    if args.backend == "gpu":
        from ..backends import get_backend
        from ..backends.cupy.library import KernelLibrary, nvrtc_options

        get_backend("gpu")  # the GPU's reason when it is not usable
        result = {"compiler": "NVRTC through cupy.RawModule, options "
                              f"{' '.join(nvrtc_options())}",
                  **time_kernel_loads(KernelLibrary)}
    elif args.backend == "cupy-emulated":
        from .emulation import host_kernel_library

        builds = itertools.count()
        result = {"compiler": "the host C++ compiler (emulation; says nothing about NVRTC)",
                  **time_kernel_loads(lambda: host_kernel_library(
                      _fresh(build_dir / f"build-{next(builds)}")))}
    else:
        raise GpubackpropError(f"the kernels probe takes --backend gpu or cupy-emulated, "
                               f"not {args.backend}")
    write_json(args.json, result)
    print(result["compiler"])
    for phase in ("first", "warm"):
        files = result[phase]["files"]
        print(f"{phase}: " + ", ".join(f"{name} {entry['first_get_s']:.3f} s"
                                       for name, entry in files.items())
              + f"; total {result[phase]['total_s']:.3f} s")
    return 0


def probe_kernel_parity(args, build_dir: Path) -> int:
    from ..backends import get_backend
    from .parity import ParityReport, compare_backends, format_report, kernel_cases

    reference = get_backend("numpy")
    candidate = resolve_backend(args.backend, build_dir)
    report = ParityReport(args.dtype, reference.name, candidate.name, device=args.backend)
    report.rows = compare_backends(reference, candidate, args.dtype, cases=[kernel_cases])
    print(format_report(report))
    write_json(args.json, {"dtype": report.dtype, "reference": report.reference,
                           "candidate": report.candidate, "passed": report.passed,
                           "rows": [row.__dict__ for row in report.rows]})
    return 0 if report.passed else 1


def probe_fused(args, build_dir: Path) -> int:
    from ..backends import get_backend
    from ..bench.fused_calls import format_table, time_fused_calls

    if args.backend == "cupy-emulated":
        raise GpubackpropError("the fused probe times real backends: gpu, numba or numpy")
    backend = get_backend(args.backend)
    rows = time_fused_calls(backend, args.dtype)
    write_json(args.json, {"backend": backend.name, "rows": rows})
    print(format_table(rows, backend.name), end="")
    return 0


def _fresh(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


RUNNERS = {"environment": probe_environment, "kernels": probe_kernels,
           "kernel-parity": probe_kernel_parity, "fused": probe_fused}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpubackprop.verify.probes",
                                     description="one measurement of gpubackprop selftest")
    parser.add_argument("probe", choices=PROBES)
    parser.add_argument("--json", type=Path, required=True, help="write the result here")
    parser.add_argument("--backend", choices=BACKENDS, default="gpu")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="kernel-parity and fused: the arrays' dtype")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="gpubackprop-probe-") as build_dir:
            return RUNNERS[args.probe](args, Path(build_dir))
    except GpubackpropError as exc:
        print(f"probe {args.probe}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
