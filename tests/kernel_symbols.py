"""How compiled kernel names look in a cubin or PTX, shared by the nvcc and NVRTC compile tests."""

import re


def mangled_prefix(expression: str) -> str:
    """The Itanium-mangled prefix of ``name<float>`` / ``name<double>``, e.g. ``_Z8bias_actIfE``.

    The full symbol goes on with the parameter types (``_Z8sgd_stepIfEvPT_PKS0_xS0_``).
    """
    name, ctype = re.fullmatch(r"(\w+)<(\w+)>", expression).groups()
    return f"_Z{len(name)}{name}I{'f' if ctype == 'float' else 'd'}E"
