"""Regenerate the CUDA header of activation codes from the registry.

``python -m gpubackprop.nn.activation_header`` writes
``gpubackprop/backends/cupy/kernels/gbp_activation_codes.h``;
``--check`` only says whether the committed header is current (exit 1 if not).
"""

from __future__ import annotations

import argparse

from .activations import header_path, header_text, write_header


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpubackprop.nn.activation_header",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare the header on disk with the registry; write nothing")
    args = parser.parse_args(argv)
    if args.check:
        path = header_path()
        current = path.is_file() and path.read_text(encoding="utf-8") == header_text()
        print(f"{path}: {'up to date' if current else 'out of date; regenerate it'}")
        return 0 if current else 1
    print(f"wrote {write_header()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
