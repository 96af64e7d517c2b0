"""The emulated CuPy backend: its parity table, and proof that it can fail.

``tests/cuda_emulation`` runs the CuPy backend's code and the CUDA kernel
sources on the CPU (see its docstring for what that does not cover). These
tests show that the emulation runs the kernels rather than the fallbacks,
that it rejects launch arguments a GPU would misread, and that a wrong
kernel source makes it disagree with the NumPy reference.
"""

import shutil

import numpy as np
import pytest

from gpubackprop.backends import NumpyBackend
from gpubackprop.backends.cupy import library as _kernels
from gpubackprop.verify.parity import compare_backends


def _launches(backend) -> int:
    return sum(kernel.launches for kernel in backend.kernels._kernels.values())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_parity_row_passes_on_the_emulated_gpu(emulated_gpu, dtype):
    before = _launches(emulated_gpu)
    rows = compare_backends(NumpyBackend(), emulated_gpu, dtype)
    failed = [row.name for row in rows if not row.passed]
    assert rows and not failed, f"parity rows failing: {failed}"
    assert _launches(emulated_gpu) - before > 100, "the kernels, not the fallbacks, must run"


def test_a_scalar_of_the_wrong_c_type_is_refused(emulated_gpu):
    W = emulated_gpu.asarray(np.ones(8, np.float32))
    kernel = emulated_gpu.kernels.get("sgd_step", np.float32)
    with pytest.raises(TypeError, match=r"sgd_step<float> parameter T lr: needs float32, "
                                        r"got float"):
        kernel((1,), (256,), (W, W, np.int64(8), 0.1))
    with pytest.raises(TypeError, match=r"parameter long long n: needs int64, got int"):
        kernel((1,), (256,), (W, W, 8, np.float32(0.1)))
    with pytest.raises(TypeError, match=r"parameter T\* dW: needs a C-contiguous float32"):
        kernel((1,), (256,), (W, W.astype(np.float64), np.int64(8), np.float32(0.1)))


@pytest.mark.slow
def test_a_wrong_kernel_source_fails_against_the_reference(emulated_gpu, tmp_path):
    from cuda_emulation.host_kernels import HostKernels

    sources = tmp_path / "kernels"
    sources.mkdir()
    for filename in _kernels.KERNEL_FILES:
        shutil.copy(_kernels.kernel_dir() / filename, sources)
    mutations = {"softmax_xent.cu": ("offset > 0; offset >>= 1) s +=",  # drops a shuffle
                                     "offset > 1; offset >>= 1) s +="),
                 "optimizers.cu": ("step_size * m /", "step_size * g /")}  # Adam steps by g
    for filename, (old, new) in mutations.items():
        text = (sources / filename).read_text()
        assert old in text
        (sources / filename).write_text(text.replace(old, new))
    build = tmp_path / "build"
    build.mkdir()
    correct = emulated_gpu.kernels
    emulated_gpu.kernels = HostKernels(build, directory=sources)
    try:
        rows = {row.name: row.passed for row in compare_backends(NumpyBackend(), emulated_gpu,
                                                                 "float64")}
    finally:
        emulated_gpu.kernels = correct
    broken = {"softmax_cross_entropy loss", "softmax_cross_entropy dZ", "adam_update W",
              "ce loss"}
    assert not any(rows[name] for name in broken), rows
    assert rows["sgd_update W"] and rows["bias_activation tanh"], "unmutated kernels still pass"


def test_numpy_functions_on_device_arrays_are_refused_as_cupy_refuses_them(emulated_gpu):
    X = emulated_gpu.asarray(np.arange(6.0).reshape(2, 3))
    assert isinstance(X, emulated_gpu.xp.ndarray)
    with pytest.raises(TypeError, match="numpy.concatenate called on a device array"):
        np.concatenate([X, X])
    joined = emulated_gpu.xp.concatenate([X, X])
    assert isinstance(joined, emulated_gpu.xp.ndarray) and joined.shape == (4, 3)
    np.testing.assert_array_equal(emulated_gpu.to_numpy(joined)[2:], np.arange(6.0).reshape(2, 3))


def test_training_reads_back_to_the_host_once_per_epoch(emulated_gpu):
    from cuda_emulation.fake_cupy import DeviceArray

    from gpubackprop.nn.model import mlp
    from gpubackprop.training.trainer import Trainer

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=96)
    X = (rng.standard_normal((3, 8))[labels] * 3 + rng.standard_normal((96, 8)))
    trainer = Trainer(mlp(8, [16], 3, device=emulated_gpu, seed=0), batch_size=16, verbose=0)
    before = DeviceArray.host_reads
    history = trainer.fit(X.astype(np.float32), labels, epochs=3)  # 6 batches an epoch
    assert DeviceArray.host_reads - before == 3
    assert len(history.loss) == 18 and history.accuracy[-1] > 0.5
