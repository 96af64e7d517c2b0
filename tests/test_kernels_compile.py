"""Every kernel in kernels/*.cu compiles with nvcc for sm_80 and sm_90, as listed.

No GPU is needed. A wrapper includes every source file and takes the address
of each name expression of ``library.py`` (``bias_act<float, int>`` ...), which
instantiates the templates as NVRTC's name expressions do at run time, with
the options the library gives NVRTC (``nvrtc_options()``); the float kernels'
PTX must hold no double-precision arithmetic (reading the optimizer's float64
step state, a load and a conversion per entry, is allowed). nvcc is
required when ``CI=true``; elsewhere the compile tests are skipped without it.
"""

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from gpubackprop.backends.cupy import library as _kernels
from kernel_symbols import mangled_prefix

ARCHS = ("sm_80", "sm_90")


@pytest.fixture(scope="module")
def nvcc_outputs(tmp_path_factory):
    """Compile the wrapper once per arch (cubin) and once to PTX, in parallel."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nvcc is required when CI=true but is not on PATH")
        pytest.skip("nvcc is not on PATH; the CUDA sources cannot be compiled here")
    folder = tmp_path_factory.mktemp("nvcc")
    includes = "".join(f'#include "{_kernels.kernel_dir() / name}"\n'
                       for name in _kernels.KERNEL_FILES)
    refs = ", ".join(f"(void*)&{expr}" for expr in _kernels.all_name_expressions())
    wrapper = folder / "all_kernels.cu"
    wrapper.write_text(f"{includes}\nvoid* gbp_kernel_refs[] = {{{refs}}};\n")
    # CuPy appends -ftz=true to every compilation; compile the same way.
    options = [nvcc, *_kernels.nvrtc_options(), "-ftz=true", "--Werror", "all-warnings"]
    jobs = {arch: [*options, f"-arch={arch}", "--cubin", "-o", str(folder / f"{arch}.cubin"),
                   str(wrapper)] for arch in ARCHS}
    jobs["ptx"] = [*options, f"-arch={ARCHS[0]}", "--ptx", "-o", str(folder / "kernels.ptx"),
                   str(wrapper)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = dict(zip(jobs, pool.map(
            lambda cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=300),
            jobs.values())))
    return folder, results


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles_for(arch, nvcc_outputs):
    folder, results = nvcc_outputs
    result = results[arch]
    assert result.returncode == 0, f"nvcc -arch={arch} failed:\n{result.stderr}"
    cubin = (folder / f"{arch}.cubin").read_bytes()
    missing = [expr for expr in _kernels.all_name_expressions()
               if mangled_prefix(expr).encode() not in cubin]
    assert not missing, f"not instantiated in the {arch} cubin: {missing}"


#: The only double-precision PTX a float kernel may hold: registers for, loads of and
#: conversions to float from the optimizer's float64 step state (see optimizers.cu).
STEP_STATE_READ = re.compile(r"^\s*(\.reg \.f64\s|ld\.global(\.nc)?\.f64\s|"
                             r"cvt\.rn(\.ftz)?\.f32\.f64\s)")


def test_float_kernels_never_compute_in_double(nvcc_outputs):
    folder, results = nvcc_outputs
    assert results["ptx"].returncode == 0, results["ptx"].stderr
    ptx = (folder / "kernels.ptx").read_text()
    entries = list(re.finditer(r"\.entry\s+(\w+)\(", ptx))
    bodies = {m.group(1): ptx[m.end(): entries[i + 1].start() if i + 1 < len(entries) else None]
              for i, m in enumerate(entries)}
    float_kernels = [e for e in _kernels.all_name_expressions() if "<float," in e]
    for expr in float_kernels:
        (body,) = [b for name, b in bodies.items() if name.startswith(mangled_prefix(expr))]
        computed = [line.strip() for line in body.splitlines()
                    if ".f64" in line and not STEP_STATE_READ.match(line)]
        assert not computed, f"{expr} has double-precision instructions: {computed[:3]}"
        assert ".f32" in body, f"{expr} has no float instruction at all"


def test_every_listed_kernel_is_defined_in_its_file():
    for filename, names in _kernels.KERNEL_FILES.items():
        source = (_kernels.kernel_dir() / filename).read_text()
        for name in names:
            assert re.search(rf"template <typename T, typename I>\s*__global__ void {name}\(",
                             source), \
                f"{name} is listed for {filename} but not defined there as a template kernel"


def test_every_kernel_file_is_listed():
    on_disk = {path.name for path in _kernels.kernel_dir().glob("*.cu")}
    assert on_disk == set(_kernels.KERNEL_FILES)
