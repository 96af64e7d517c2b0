"""GPU detection against a stand-in ``cupy``: driver and runtime versions, the probe.

``gpu_status`` imports ``cupy`` and asks it for versions and a small computation;
these tests put a fake module in ``sys.modules`` (and clear the status cache) to
show what it decides for drivers older than, or as new as, CuPy's runtime.
"""

import sys
import types

import numpy as np
import pytest

from gpubackprop import backends
from gpubackprop.cli.main import main


def _fake_cupy(driver: int, runtime: int, probe_sum: float = 6.0) -> types.ModuleType:
    """A ``cupy`` with one device, the given CUDA versions, and a probe that sums to ``probe_sum``."""
    module = types.ModuleType("cupy")
    module.__version__ = "14.0.0"
    module.float32 = np.float32
    module.arange = lambda n, dtype: np.arange(n, dtype=dtype) * (probe_sum / 6.0)
    module.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
        getDeviceCount=lambda: 1, runtimeGetVersion=lambda: runtime,
        driverGetVersion=lambda: driver,
        getDeviceProperties=lambda index: {"name": b"NVIDIA H200"}))
    return module


@pytest.fixture
def fake_cupy(monkeypatch):
    """Installs a fake ``cupy`` built by ``_fake_cupy(...)``; gpu_status is re-probed."""
    def install(*args, **kwargs):
        monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(*args, **kwargs))
        backends.gpu_status.cache_clear()
    yield install
    backends.gpu_status.cache_clear()


def test_an_older_minor_driver_runs_a_newer_runtime_of_its_major_version(fake_cupy):
    fake_cupy(driver=13000, runtime=13020)
    status = backends.gpu_status()
    assert status.usable, status.reason
    assert status.device_name == "NVIDIA H200"
    assert (status.cuda_driver, status.cuda_runtime) == (13000, 13020)
    assert "driver (13.0) is older than the runtime (13.2)" in status.driver_note
    assert "minor-version compatibility" in status.driver_note


def test_a_driver_as_new_as_the_runtime_carries_no_note(fake_cupy):
    fake_cupy(driver=13020, runtime=13000)
    status = backends.gpu_status()
    assert status.usable and status.driver_note is None


def test_a_driver_of_an_older_major_version_is_refused_with_the_reason(fake_cupy):
    fake_cupy(driver=12080, runtime=13000)
    status = backends.gpu_status()
    assert not status.usable
    assert status.reason == ("the CUDA driver (12.8) is older than the major version of the "
                             "CUDA runtime CuPy was built for (13.0); update the NVIDIA driver "
                             "or install CuPy for CUDA 12")
    assert (status.cuda_driver, status.cuda_runtime) == (12080, 13000)


def test_the_probe_computation_still_decides(fake_cupy):
    fake_cupy(driver=13000, runtime=13020, probe_sum=5.0)
    status = backends.gpu_status()
    assert not status.usable
    assert status.reason == "a test computation on NVIDIA H200 returned a wrong result"


def test_info_shows_the_versions_and_the_driver_note(fake_cupy, monkeypatch, capsys):
    fake_cupy(driver=13000, runtime=13020)
    # "auto" would load the real CupyBackend against the fake module; name the CPU instead.
    monkeypatch.setattr(backends, "describe_auto_choice", lambda: "numpy (test)")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cuda        driver 13.0, runtime 13.2" in out
    assert "note        the CUDA driver (13.0) is older than the runtime (13.2)" in out


@pytest.mark.parametrize("compute_type, environment", [("TF32", "0"), ("DEFAULT", "1")])
def test_machine_info_reads_tf32_from_cupys_compute_type_not_the_environment(
        emulated_gpu, monkeypatch, compute_type, environment):
    from gpubackprop import machine

    codes = {"DEFAULT": 1, "TF32": 7}  # CuPy's COMPUTE_TYPE_* values
    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.COMPUTE_TYPE_DEFAULT, linalg.COMPUTE_TYPE_TF32 = codes["DEFAULT"], codes["TF32"]
    linalg.get_compute_type = lambda dtype: codes[compute_type]
    core = types.ModuleType("cupy._core")
    core._routines_linalg = linalg
    fake = _fake_cupy(driver=13000, runtime=13000)
    fake._core = core
    for name, module in (("cupy", fake), ("cupy._core", core),
                         ("cupy._core._routines_linalg", linalg)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv("CUPY_TF32", environment)
    # The CuPy backend's own class (not the emulation's TF32-less subclass) on the fake module.
    gpu = emulated_gpu.module.CupyBackend()
    monkeypatch.setattr(machine, "gpu_status", lambda: backends.GPUStatus(True, "fake"))
    monkeypatch.setattr(machine, "get_backend", lambda device: gpu)
    assert machine.machine_info()["cupy_tf32"] is (compute_type == "TF32")


def test_machine_info_has_no_tf32_state_without_a_gpu(monkeypatch):
    from gpubackprop import machine

    monkeypatch.setattr(machine, "gpu_status", lambda: backends.GPUStatus(False, "none (test)"))
    monkeypatch.setenv("CUPY_TF32", "1")
    assert machine.machine_info()["cupy_tf32"] is None


@pytest.mark.parametrize("driver_loads", [False, True])
def test_a_machine_without_the_driver_library_is_told_so(fake_cupy, monkeypatch, driver_loads):
    def no_device():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    fake_cupy(13000, 13020)
    monkeypatch.setattr(sys.modules["cupy"].cuda.runtime, "getDeviceCount", no_device)
    monkeypatch.setattr(backends, "driver_library_loads", lambda: driver_loads)
    status = backends.gpu_status()
    assert not status.usable
    if driver_loads:
        assert "found no usable CUDA driver or device" in status.reason
        assert "InsufficientDriver" in status.reason
    else:
        assert status.reason == ("CuPy 14.0.0 is installed but there is no NVIDIA driver "
                                 "(libcuda.so.1 does not load)")
