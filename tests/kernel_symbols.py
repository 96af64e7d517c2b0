"""How compiled kernel names look in a cubin or PTX, shared by the nvcc and NVRTC compile tests."""

import re


#: Itanium mangling of the template arguments the kernels take.
MANGLED_TYPES = {"float": "f", "double": "d", "int": "i", "long long": "x"}


def mangled_prefix(expression: str) -> str:
    """The Itanium-mangled prefix of ``name<T, ...>``: ``_Z8bias_actIfiE`` for
    ``bias_act<float, int>``, ``_Z8bias_actIfE`` for ``bias_act<float>``.

    The full symbol goes on with the parameter types (``_Z8sgd_stepIfiEvPT_PKS0_T0_S0_``).
    """
    name, arguments = re.fullmatch(r"(\w+)<([\w ,]+)>", expression).groups()
    mangled = "".join(MANGLED_TYPES[argument.strip()] for argument in arguments.split(","))
    return f"_Z{len(name)}{name}I{mangled}E"
