"""Every kernel in kernels/*.cu compiles with NVRTC through CuPy's own compiler path.

CuPy builds our kernels with NVRTC, not nvcc: no host headers, its own dialect
rules, template kernels found by name expressions. Here each file is compiled
as ``cupy.RawModule(code=..., options=nvrtc_options(), name_expressions=...)``
compiles it on an sm_80 and an sm_90 device, without a GPU or CUDA driver:
NVRTC is a library (the ``nvidia-cuda-nvrtc`` wheel; CUDA headers from
``nvidia-cuda-runtime``), installed with CuPy by the ``nvrtc-ci`` extra. Every
name expression must come back lowered to its mangled symbol, and the cubin
must define that symbol. The NVRTC version used is printed and named in
every failure.

CuPy internals used, checked against CuPy 14.0.1 and 14.2.0; outside
:data:`CUPY_CHECKED` the tests skip with that reason:

- ``cupy._core.core.assemble_cupy_compiler_options``: what
  ``compile_with_cache`` (behind ``RawModule``) does to the options: CuPy's
  bundled CCCL include directories first, CuPy's and the CUDA headers'
  include directories last.
- ``cupy.cuda.compiler.compile_using_nvrtc``: the NVRTC call of
  ``_compile_with_cache_cuda``, which appends ``-ftz=true`` first (so do we).
  It adds ``-arch=sm_XY`` and ``--device-as-default-execution-space`` and
  returns the cubin with the lowered names.
- ``cupy.cuda.compiler._get_arch_for_options_for_nvrtc`` is memoized per
  device, which asks the driver for the current device; these tests swap in
  the undecorated function (``__wrapped__``).

Under ``CI=true`` (``.ci/run`` installs ``.[nvrtc-ci]``) a missing CuPy or
NVRTC, or a CuPy outside the checked range, fails these tests instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pytest

from gpubackprop.backends.cupy import library
from kernel_symbols import mangled_prefix

ARCHS = ("80", "90")
#: CuPy versions whose internals this file was checked against: [low, high).
CUPY_CHECKED = ((14, 0), (15, 0))
#: CuPy appends this to every NVRTC compilation (``_compile_with_cache_cuda``).
CUPY_APPENDED = ("-ftz=true",)


def _unavailable(reason: str):
    """Skip with the reason, or fail under ``CI=true``, where these tests must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; the NVRTC compile test is required when CI=true "
                    f"(pip install -e '.[nvrtc-ci]')")
    pytest.skip(reason)


@dataclass(frozen=True)
class Build:
    """One kernel source compiled by NVRTC for one architecture.

    Attributes
    ----------
    binary : bytes
        The cubin (or PTX, where CuPy asks NVRTC for PTX); empty when it failed.
    lowered : dict of str to str
        Name expression -> mangled symbol, as NVRTC reports it.
    error : str or None
        NVRTC's log when it refused the source.
    """

    binary: bytes
    lowered: dict
    error: str | None = None


@dataclass(frozen=True)
class NVRTC:
    """CuPy's NVRTC compile path, usable without a device."""

    compiler: object
    core: object
    cupy_version: str
    version: tuple
    library_path: str

    @property
    def label(self) -> str:
        major, minor = self.version
        return f"NVRTC {major}.{minor} ({self.library_path}), CuPy {self.cupy_version}"

    def compile(self, source: str, expressions: list[str], arch: str,
                options: tuple[str, ...] | None = None) -> Build:
        """``source`` compiled for ``sm_<arch>`` as ``RawModule`` would, with ``options``
        (:func:`library.nvrtc_options` when omitted)."""
        options = library.nvrtc_options() if options is None else options
        full = self.core.assemble_cupy_compiler_options(tuple(options)) + CUPY_APPENDED
        try:
            binary, lowered = self.compiler.compile_using_nvrtc(
                source, full, arch=arch, name_expressions=list(expressions))
        except self.compiler.CompileException as exc:
            return Build(b"", {}, str(exc))
        return Build(bytes(binary), dict(lowered or {}))


def problems(build: Build, expressions: list[str], arch: str) -> list[str]:
    """What is wrong with one build: NVRTC's refusal, a name expression not lowered to
    its kernel's mangled symbol, or a symbol the binary does not hold. Empty when fine."""
    if build.error is not None:
        return [f"NVRTC refused the source for sm_{arch}:\n{build.error}"]
    found = []
    for expression in expressions:
        symbol = build.lowered.get(expression)
        if not symbol or not symbol.startswith(mangled_prefix(expression)):
            found.append(f"{expression} was lowered to {symbol!r}, "
                         f"not to {mangled_prefix(expression)}...")
        elif symbol.encode() not in build.binary:
            found.append(f"{expression} ({symbol}) is not in the sm_{arch} binary")
    return found


@pytest.fixture(scope="module")
def nvrtc(request):
    """CuPy's compiler with NVRTC loaded, or a skip (a failure under CI) saying why not."""
    try:
        import cupy
        from cupy._core import core
        from cupy.cuda import compiler
    except Exception as exc:  # ImportError, or whatever a broken CuPy install raises
        _unavailable(f"CuPy does not import ({type(exc).__name__}: {exc})")
    low, high = CUPY_CHECKED
    version = tuple(int(part) for part in re.findall(r"\d+", cupy.__version__)[:2])
    if not low <= version < high:
        _unavailable(f"CuPy {cupy.__version__} is outside {low[0]}.{low[1]} <= CuPy < "
                     f"{high[0]}.{high[1]}, the versions whose compiler internals this "
                     f"test was checked against")
    arch_option = compiler._get_arch_for_options_for_nvrtc
    if not hasattr(arch_option, "__wrapped__"):
        _unavailable(f"CuPy {cupy.__version__}'s _get_arch_for_options_for_nvrtc is no "
                     f"longer a memoized function")
    try:
        nvrtc_version = tuple(compiler._get_nvrtc_version())
        from cuda.pathfinder import load_nvidia_dynamic_lib

        library_path = load_nvidia_dynamic_lib("nvrtc").abs_path
    except Exception as exc:
        _unavailable(f"NVRTC cannot be loaded ({type(exc).__name__}: {exc}); "
                     f"install nvidia-cuda-nvrtc")
    found = NVRTC(compiler, core, cupy.__version__, nvrtc_version, library_path)
    plugins = request.config.pluginmanager
    with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
        plugins.get_plugin("terminalreporter").write_line(
            f"\ntest_kernels_nvrtc: compiling with {found.label}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiler, "_get_arch_for_options_for_nvrtc", arch_option.__wrapped__)
        yield found


@pytest.fixture(scope="module")
def builds(nvrtc):
    """Every kernel file compiled for every architecture, by (filename, arch)."""
    directory = library.kernel_dir()
    return {(filename, arch): nvrtc.compile((directory / filename).read_text(encoding="utf-8"),
                                            library.name_expressions(filename), arch)
            for filename in library.KERNEL_FILES for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("filename", list(library.KERNEL_FILES))
def test_kernel_file_compiles_with_nvrtc_for(filename, arch, nvrtc, builds):
    found = problems(builds[filename, arch], library.name_expressions(filename), arch)
    assert not found, f"{filename} with {nvrtc.label}:\n" + "\n".join(found)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_name_expression_is_lowered_to_its_own_symbol(arch, nvrtc, builds):
    lowered = {}
    for filename in library.KERNEL_FILES:
        lowered.update(builds[filename, arch].lowered)
    expected = library.all_name_expressions()
    assert sorted(lowered) == sorted(expected), f"lowered by {nvrtc.label}: {sorted(lowered)}"
    assert len(set(lowered.values())) == len(expected), \
        f"two name expressions share a symbol with {nvrtc.label}: {lowered}"


def test_a_host_only_call_is_refused(nvrtc):
    source = (library.kernel_dir() / "optimizers.cu").read_text(encoding="utf-8")
    broken = source.replace("return sqrt(x);", "return std::sqrt(x);")
    assert broken != source, "optimizers.cu no longer has the line this test mutates"
    expressions = library.name_expressions("optimizers.cu")
    found = problems(nvrtc.compile(broken, expressions, ARCHS[0]), expressions, ARCHS[0])
    assert found and "sqrt" in found[0], f"{nvrtc.label} should refuse std::sqrt, found: {found}"


def test_a_name_expression_without_a_kernel_is_refused(nvrtc):
    source = (library.kernel_dir() / "optimizers.cu").read_text(encoding="utf-8")
    expressions = [*library.name_expressions("optimizers.cu"), "nesterov_step<float, int>"]
    found = problems(nvrtc.compile(source, expressions, ARCHS[0]), expressions, ARCHS[0])
    assert found and "nesterov_step" in found[0], found


def test_a_symbol_missing_from_the_binary_is_reported(nvrtc, builds):
    build = builds["optimizers.cu", ARCHS[0]]
    symbol = build.lowered["adam_step<float, int>"]
    stripped = Build(build.binary.replace(symbol.encode(), b"_" * len(symbol)), build.lowered)
    assert problems(stripped, ["adam_step<float, int>"], ARCHS[0]) == [
        f"adam_step<float, int> ({symbol}) is not in the sm_{ARCHS[0]} binary"]


def test_a_name_expression_lowered_to_another_kernel_is_reported():
    build = Build(b"_Z8sgd_stepIdEvPT_PKS0_xS0_", {"sgd_step<float>": "_Z8sgd_stepIdEvPT_PKS0_xS0_"})
    assert problems(build, ["sgd_step<float>"], ARCHS[0]) == [
        "sgd_step<float> was lowered to '_Z8sgd_stepIdEvPT_PKS0_xS0_', not to _Z8sgd_stepIfE..."]


def test_the_options_admit_cupys_bundled_cccl(nvrtc):
    """CuPy 14's CCCL refuses C++14; a kernel including it must compile with ours."""
    source = ("#include <cuda/std/type_traits>\n"
              "template <typename T> __global__ void fill_one(T* x) {\n"
              "    static_assert(cuda::std::is_floating_point<T>::value, \"float types only\");\n"
              "    x[0] = T(1);\n}\n")
    ours = nvrtc.compile(source, ["fill_one<float>"], ARCHS[0])
    assert problems(ours, ["fill_one<float>"], ARCHS[0]) == [], nvrtc.label
    older = (*(option for option in library.nvrtc_options() if not option.startswith("--std=")),
             "--std=c++14")
    refused = nvrtc.compile(source, ["fill_one<float>"], ARCHS[0], options=older)
    assert refused.error is not None and "C++ 17" in refused.error, \
        f"{nvrtc.label} no longer refuses CCCL under C++14: the test proves nothing"


def test_missing_nvrtc_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required when CI=true"):
        _unavailable("NVRTC cannot be loaded (test)")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"NVRTC cannot be loaded \(test\)"):
        _unavailable("NVRTC cannot be loaded (test)")
