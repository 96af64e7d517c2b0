"""Render the one generated CUDA header: every constant the kernels share with Python.

``kernels/gbp_constants.h`` (:data:`.library.CONSTANTS_HEADER`) holds the
activation codes of :mod:`gpubackprop.nn.activations` (``GBP_ACT_<NAME>``, the
``act`` argument of the kernels in ``activations.cu``), the update-rule codes
(``GBP_RULE_<RULE>``, the ``rule`` argument of ``optimizer_advance``) and the
step-state indices (``GBP_<ENTRY>`` for the entries of every rule,
``GBP_<RULE>_<ENTRY>`` for a rule's own) of :mod:`gpubackprop.nn.update_rules`.
The registries hold the facts; this module only renders them.
``python -m gpubackprop.backends.cupy.constants_header`` writes the header;
``--check`` writes nothing and exits 1 when the committed header is stale.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from ...nn.activations import ACTIVATIONS, NAMES
from ...nn.update_rules import COMMON_ENTRIES, UPDATE_RULES
from .library import CONSTANTS_HEADER, KERNEL_FOLDER

#: The command that writes the header (named in its first lines and in every message).
COMMAND = "python -m gpubackprop.backends.cupy.constants_header"


def sections() -> list[tuple[str, list[tuple[str, int]]]]:
    """The header's constants in order, by section: ``(comment, [(name, value), ...])``.

    Raises
    ------
    ValueError
        When two registry names render to the same constant (a rule named
        ``act`` with an entry ``relu`` would give ``GBP_ACT_RELU`` twice).
    """
    found = [("Activation codes (the act argument of the kernels in activations.cu).",
              [(f"GBP_ACT_{name.upper()}", ACTIVATIONS[name].code) for name in NAMES]),
             ("Update rules (the rule argument of optimizer_advance).",
              [(f"GBP_RULE_{rule.name.upper()}", rule.code) for rule in UPDATE_RULES.values()]),
             ("Entries of every step state. An optimizer's step state is one double vector on "
              "the device: these entries, then its rule's hyperparameters and derived values "
              "(below; see gpubackprop.nn.update_rules). Kernels read entries by these indices.",
              [(f"GBP_{entry.upper()}", index) for index, entry in enumerate(COMMON_ENTRIES)])]
    for rule in UPDATE_RULES.values():
        own = rule.layout[len(COMMON_ENTRIES):]
        if own:
            found.append((f"{rule.name}: {', '.join(own)}.",
                          [(f"GBP_{rule.name.upper()}_{entry.upper()}", rule.index(entry))
                           for entry in own]))
    names = [name for _, constants in found for name, _ in constants]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"the registries give the CUDA constant {', '.join(twice)} twice; "
                         "rename an activation, update rule or step-state entry")
    return found


def render() -> str:
    """The header's text: one ``constexpr int`` per constant of :func:`sections`."""
    lines = ["// Generated from gpubackprop/nn/activations.py and gpubackprop/nn/update_rules.py",
             f"// by {COMMAND}; do not edit.",
             "// The constants the kernels share with Python: activation codes, update-rule codes",
             "// and step-state indices.",
             "#pragma once"]
    for comment, constants in sections():
        lines += [""] + textwrap.wrap(comment, 90, initial_indent="// ", subsequent_indent="// ")
        lines += [f"constexpr int {name} = {value};" for name, value in constants]
    return "\n".join(lines) + "\n"


def header_path() -> Path:
    """Where the header lives in this installation, beside the ``.cu`` files."""
    return KERNEL_FOLDER / CONSTANTS_HEADER


def main(argv=None) -> int:
    """Write the header, or with ``--check`` say whether it is current (exit 1 if not)."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare the header on disk with the registries; write nothing")
    args = parser.parse_args(argv)
    path = header_path()
    if args.check:
        current = path.is_file() and path.read_text(encoding="utf-8") == render()
        print(f"{path}: up to date" if current else f"{path}: out of date; run {COMMAND}")
        return 0 if current else 1
    path.write_text(render(), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
