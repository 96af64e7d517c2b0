"""The CUDA header of the optimizer registry: rule codes and step-state indices.

``kernels/optimizer_state.cuh`` is generated from
:data:`gpubackprop.nn.optim.UPDATE_RULES` by :func:`render`, so the kernels
index the step state exactly as the Python and Numba code do; a test checks
that the committed file is current. Regenerate it after changing the registry::

    python -m gpubackprop.backends.cupy.optimizer_header
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from ...nn.optim import COMMON_ENTRIES, UPDATE_RULES

#: The generated header's file name, beside the ``.cu`` files.
HEADER_NAME = "optimizer_state.cuh"


def render() -> str:
    """The header's text: ``GBP_RULE_<RULE>`` codes and ``GBP_<ENTRY>`` / ``GBP_<RULE>_<ENTRY>`` indices."""
    lines = ["// Generated from gpubackprop/nn/optim.py by",
             "// python -m gpubackprop.backends.cupy.optimizer_header; do not edit.",
             "//",
             "// An optimizer's step state is one double vector on the device: the common",
             "// entries, then its rule's hyperparameters and derived values (see",
             "// gpubackprop.nn.optim). Kernels read entries by these indices.",
             "#pragma once", "", "// Update rules (the rule argument of optimizer_advance)."]
    lines += [f"constexpr int GBP_RULE_{rule.name.upper()} = {rule.code};"
              for rule in UPDATE_RULES.values()]
    lines += ["", "// Entries of every step state."]
    lines += [f"constexpr int GBP_{entry.upper()} = {i};" for i, entry in enumerate(COMMON_ENTRIES)]
    for rule in UPDATE_RULES.values():
        own = rule.layout[len(COMMON_ENTRIES):]
        if own:
            lines += [""] + textwrap.wrap(f"{rule.name}: {', '.join(own)}.", 90,
                                          initial_indent="// ", subsequent_indent="//   ")
            lines += [f"constexpr int GBP_{rule.name.upper()}_{entry.upper()} = "
                      f"{rule.index(entry)};" for entry in own]
    return "\n".join(lines) + "\n"


def header_path() -> Path:
    return Path(__file__).resolve().with_name("kernels") / HEADER_NAME


if __name__ == "__main__":
    header_path().write_text(render(), encoding="utf-8")
    print(f"wrote {header_path()}")
