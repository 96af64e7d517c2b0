"""The parts of data-parallel training that need no MPI: the plan's all-reduce step,
the fused gradient buffer, the NCCL communicator on the emulated CuPy, the start-up
check and the abort on a failing rank (ranks stood in for by plain objects)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from gpubackprop import Trainer, mlp
from gpubackprop.distributed import Communicator, check_same_everywhere, communicator_for, \
    rank_0_first, stop_all_on_error
from gpubackprop.distributed.nccl import NCCL_DTYPES, NcclCommunicator
from gpubackprop.errors import DataFileError, DistributedError
from gpubackprop.nn.plan import ReduceOp, block


class Ranks(Communicator):
    """Rank ``rank`` of ``size``; the other ranks' contributions are given as arrays."""

    name = "stand-in"

    def __init__(self, rank=0, size=2, others=None, facts_of_others=()):
        self.rank, self.size = rank, size
        self.others, self.facts_of_others = others, list(facts_of_others)
        self.aborted = None

    def allreduce_sum(self, buffer) -> None:
        buffer += self.others

    def allgather(self, value) -> list:
        return [value] + self.facts_of_others if self.rank == 0 else \
            self.facts_of_others[:self.rank] + [value] + self.facts_of_others[self.rank:]

    def broadcast(self, value, root=0):
        return value

    def abort(self, code: int) -> None:
        self.aborted = code


@pytest.mark.parametrize("total, parts", [(10, 3), (2, 3), (7, 2), (1, 1)])
def test_blocks_cover_a_batch_once_and_differ_by_at_most_one(total, parts):
    blocks = [block(total, parts, k) for k in range(parts)]
    assert blocks[0][0] == 0 and blocks[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    sizes = [stop - start for start, stop in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_each_rank_takes_its_block_of_a_shuffled_batch_and_of_a_slice():
    index = np.array([9, 4, 7, 1, 0, 3, 8], dtype=np.int64)
    blocks = [ReduceOp(Ranks(rank, 3), None, 0, True).shard(index, 10) for rank in range(3)]
    assert [rows.tolist() for rows, _, _ in blocks] == [[9, 4], [7, 1], [0, 3, 8]]
    assert [(count, total) for _, count, total in blocks] == [(2, 7), (2, 7), (3, 7)]
    rows, count, total = ReduceOp(Ranks(2, 3), None, 0, True).shard(slice(40, 50), 42)
    assert (rows, count, total) == (slice(41, 42, 1), 1, 2)


@pytest.mark.parametrize("mean", [True, False])
def test_combine_weights_the_rank_s_share_and_sums_one_buffer(mean):
    others = np.array([10.0, 20.0, 30.0, 0.5, 4.0])  # the other ranks' gradients, loss, hits
    buffer = np.array([1.0, 2.0, 3.0, 0.0, 0.0])
    reduce = ReduceOp(Ranks(others=others), buffer, 3, mean)
    loss, hits = reduce.combine(0.9, 2, count=3, total=4)
    weight = 0.75 if mean else 1.0
    np.testing.assert_allclose(buffer[:3], np.array([1.0, 2.0, 3.0]) * weight + others[:3])
    assert loss == pytest.approx(0.9 * 0.75 + 0.5) and hits == 6
    buffer[:] = [np.nan, 1, 1, 0, 0]  # an empty block contributes zeros, not stale gradients
    loss, hits = reduce.combine(123.0, None, count=0, total=4)
    np.testing.assert_array_equal(buffer[:3], others[:3])
    assert loss == 0.5 and hits is None


def test_fused_gradients_are_views_of_one_buffer_and_training_is_unchanged(backend):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    results = []
    for fused in (False, True):
        model = mlp(4, [5, 6], 3, device=backend, dtype="float64", seed=1)
        if fused:
            buffer, size = model.fuse_gradients(extra=2)
            assert buffer.shape == (size + 2,) and size == model.n_parameters()
            assert model.fuse_gradients(extra=2)[0] is buffer
            for name, dW in model.gradients().items():
                assert backend.xp.may_share_memory(dW, buffer), name
        Trainer(model, batch_size=8, verbose=0).fit(X, y, epochs=2)
        results.append(model.state_arrays())
        if fused:
            flat = backend.to_numpy(buffer[:size])
            np.testing.assert_array_equal(flat, np.concatenate(
                [backend.to_numpy(dW).ravel() for dW in model.gradients().values()]))
    for name in results[0]:
        np.testing.assert_allclose(results[1][name], results[0][name], rtol=1e-12, err_msg=name)


def test_one_rank_trains_as_no_distribution_on_every_backend(backend):
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(23, 4)), rng.integers(0, 3, 23)
    weights = []
    for distributed in (None, Ranks(0, 1, others=0.0)):
        model = mlp(4, [5], 3, device=backend, dtype="float64", seed=1)
        trainer = Trainer(model, batch_size=6, verbose=0, distributed=distributed)
        trainer.fit(X, y, epochs=2)
        weights.append(model.state_arrays())
        compiler = trainer.step.compiler
    assert compiler == ("eager" if backend.name == "numpy" else compiler)
    for name in weights[0]:
        np.testing.assert_allclose(weights[1][name], weights[0][name], rtol=1e-12, err_msg=name)


def nccl_on_emulated(emulated_gpu, monkeypatch, others):
    from cuda_emulation import fake_nccl

    monkeypatch.setattr(fake_nccl, "transport", lambda values, ndev: values.__iadd__(
        others.astype(values.dtype)))
    monkeypatch.setattr(fake_nccl, "CALLS", [])
    return NcclCommunicator(Ranks(0, 2), emulated_gpu.xp), fake_nccl


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nccl_sums_the_buffer_in_place_on_cupy_s_current_stream(emulated_gpu, monkeypatch,
                                                                dtype):
    others = np.arange(5.0)
    comm, fake_nccl = nccl_on_emulated(emulated_gpu, monkeypatch, others)
    xp = emulated_gpu.xp
    buffer = xp.asarray(np.full(5, 0.5), dtype=dtype)
    with xp.cuda.Stream(non_blocking=True) as stream:  # not the null stream: its ptr is 0
        comm.allreduce_sum(buffer)
    np.testing.assert_array_equal(buffer.get(), others + 0.5)
    (rank, send, receive, count, datatype, op, on_stream), = fake_nccl.CALLS
    assert (rank, send, receive, count) == (0, buffer.data.ptr, buffer.data.ptr, 5)
    assert datatype == getattr(fake_nccl, NCCL_DTYPES[dtype]) and op == fake_nccl.NCCL_SUM
    assert on_stream == stream.ptr != 0
    assert comm.describe().startswith("NCCL") and comm.device == 0


def test_nccl_refuses_a_model_built_on_another_gpu(emulated_gpu, monkeypatch):
    import types

    comm, _ = nccl_on_emulated(emulated_gpu, monkeypatch, np.zeros(1))
    comm.check_placement(emulated_gpu.xp.zeros(3))  # the emulation's arrays name no device
    with pytest.raises(DistributedError, match="model is on GPU 1, its NCCL communicator on "
                                               "GPU 0"):
        comm.check_placement(types.SimpleNamespace(device=types.SimpleNamespace(id=1)))


def test_nccl_refuses_what_it_cannot_sum_in_place(emulated_gpu, monkeypatch):
    comm, _ = nccl_on_emulated(emulated_gpu, monkeypatch, np.zeros(4))
    xp = emulated_gpu.xp
    with pytest.raises(DistributedError, match="no NCCL data type for int32"):
        comm.allreduce_sum(xp.zeros(4, dtype=np.int32))
    with pytest.raises(DistributedError, match="contiguous 1-D CuPy array"):
        comm.allreduce_sum(xp.zeros(8)[::2])
    with pytest.raises(DistributedError, match="contiguous 1-D CuPy array"):
        comm.allreduce_sum(np.zeros(4))


def test_the_communicator_must_suit_the_backend(emulated_gpu):
    with pytest.raises(DistributedError, match="NCCL sums GPU arrays"):
        communicator_for(mlp(2, [], 2, device="numpy").backend, "nccl")
    with pytest.raises(DistributedError, match="use distributed='nccl'"):
        communicator_for(emulated_gpu, "mpi")
    with pytest.raises(DistributedError, match="one of auto, mpi, nccl"):
        communicator_for(emulated_gpu, "gloo")


def test_start_up_names_each_fact_and_rank_that_differs():
    facts = {"seed": 1, "data shape": (10, 4), "batch size": 5}
    others = [dict(facts), dict(facts, seed=2), dict(facts, seed=2, **{"data shape": (9, 4)})]
    with pytest.raises(DistributedError) as raised:
        check_same_everywhere(Ranks(0, 4, facts_of_others=others), facts)
    assert str(raised.value) == (
        "the 4 ranks do not start alike: seed differs on ranks 2, 3 (2; rank 0 has 1); "
        "data shape differs on rank 3 ((9, 4); rank 0 has (10, 4)); every rank stopped")
    assert raised.value.collective
    check_same_everywhere(Ranks(0, 3, facts_of_others=[dict(facts), dict(facts)]), facts)


def test_a_failing_rank_aborts_every_rank_and_names_itself():
    ranks, stream = Ranks(1, 3), io.StringIO()
    with pytest.raises(ValueError), stop_all_on_error(ranks, stream):
        raise ValueError("bad batch")
    assert ranks.aborted == 2
    assert stream.getvalue() == ("gpubackprop: error: rank 1 of 3 failed: ValueError: bad batch; "
                                 "stopping every rank\n")
    collective = DistributedError("all ranks raise this")
    collective.collective = True
    ranks = Ranks(0, 3)  # raised alike on every rank: each stops by itself
    with pytest.raises(DistributedError), stop_all_on_error(ranks, stream):
        raise collective
    alone = Ranks(0, 1)
    with pytest.raises(ValueError), stop_all_on_error(alone, stream):
        raise ValueError("alone")
    assert ranks.aborted is None and alone.aborted is None


class Broadcasting(Ranks):
    """A rank whose broadcasts return rank 0's ``sent`` value and are logged in ``events``."""

    def __init__(self, rank, sent=None):
        super().__init__(rank, 2)
        self.sent, self.events = sent, []

    def broadcast(self, value, root=0):
        self.events.append(("broadcast", value))
        return value if self.rank == root else self.sent


def test_rank_0_works_before_the_others_are_released():
    first = Broadcasting(0)
    assert rank_0_first(first, lambda: first.events.append("work") or "data") == "data"
    assert first.events == ["work", ("broadcast", None)]
    other = Broadcasting(1)
    assert rank_0_first(other, lambda: other.events.append("work") or "data") == "data"
    assert other.events == [("broadcast", None), "work"]


def test_rank_0_s_failure_is_raised_on_every_rank_without_an_abort():
    first = Broadcasting(0)

    def missing():
        raise DataFileError("mnist not found")

    with pytest.raises(DataFileError) as raised:
        rank_0_first(first, missing)
    assert raised.value.collective and first.events == [("broadcast", raised.value)]
    other = Broadcasting(1, sent=raised.value)
    with pytest.raises(DataFileError, match="mnist not found") as raised_there:
        rank_0_first(other, lambda: other.events.append("work"))
    assert raised_there.value.collective and "work" not in other.events
    assert first.aborted is None and other.aborted is None


class AbortReturns:
    """An ``MPI.Comm`` whose ``Abort`` returns, as MPICH's can before the launcher acts."""

    def __init__(self):
        self.aborted = None

    def Abort(self, code):  # noqa: N802 (mpi4py's name)
        self.aborted = code


def test_an_mpi_abort_that_returns_still_ends_the_process(monkeypatch):
    from gpubackprop.distributed import mpi

    exits = []

    def exit_now(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(mpi.os, "_exit", exit_now)
    communicator = object.__new__(mpi.MPICommunicator)  # no MPI: only abort is called
    communicator.comm = AbortReturns()
    with pytest.raises(SystemExit):
        communicator.abort(2)
    assert communicator.comm.aborted == 2 and exits == [2]


def test_info_says_what_is_installed_for_distributed_runs(monkeypatch, capsys):
    from gpubackprop.cli.main import main
    from gpubackprop.distributed import mpi_status

    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setenv("PMI_SIZE", "3")
    status = mpi_status()
    assert (status.rank, status.size) == (1, 3)
    assert "this process is rank 1 of 3" in status.describe()
    monkeypatch.delenv("PMI_RANK")
    monkeypatch.delenv("PMI_SIZE")
    assert main(["info"]) == 0
    line, = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("distributed ")]
    assert "communicator: MPI for numpy/numba, NCCL for cupy" in line
    assert "this process is not an MPI rank" in line


def test_a_recurrent_model_trains_with_its_gradients_fused():
    from gpubackprop.nn.layers import Linear
    from gpubackprop.nn.model import Sequential
    from gpubackprop.nn.recurrent import RNN

    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(12, 4, 3)), rng.integers(0, 2, 12)
    weights = []
    for distributed in (None, Ranks(0, 1, others=0.0)):
        model = Sequential([RNN(5, h0="learn"), Linear(2)], n_inputs=3, device="numpy",
                           dtype="float64", seed=2)
        Trainer(model, batch_size=5, verbose=0, distributed=distributed).fit(X, y, epochs=2)
        weights.append(model.state_arrays())
    assert set(weights[0]) == set(weights[1]) and "0.h0" in weights[0]
    for name in weights[0]:
        np.testing.assert_allclose(weights[1][name], weights[0][name], rtol=1e-12, err_msg=name)


@pytest.fixture
def real_nccl_host():
    """A one-rank host for NCCL on the real GPU (no MPI needed); skips without NCCL."""
    from gpubackprop.distributed.nccl import nccl_module

    cupy = pytest.importorskip("cupy")
    try:
        nccl_module(cupy)
    except DistributedError as exc:
        pytest.skip(str(exc))
    return cupy, Ranks(0, 1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_real_nccl_sums_one_rank_in_place_on_the_gpu(real_nccl_host, dtype):
    cupy, host = real_nccl_host
    comm = NcclCommunicator(host, cupy)
    buffer = cupy.arange(1000, dtype=dtype)
    pointer = buffer.data.ptr
    comm.allreduce_sum(buffer)
    cupy.cuda.get_current_stream().synchronize()
    assert buffer.data.ptr == pointer
    np.testing.assert_array_equal(buffer.get(), np.arange(1000, dtype=dtype))


@pytest.mark.gpu
def test_one_nccl_rank_trains_as_no_distribution_on_the_gpu(real_nccl_host):
    cupy, host = real_nccl_host
    comm = NcclCommunicator(host, cupy)
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(300, 20)), rng.integers(0, 4, 300)
    weights = []
    for distributed in (None, comm):
        model = mlp(20, [64], 4, device="gpu", dtype="float64", seed=1)
        trainer = Trainer(model, batch_size=64, verbose=0, distributed=distributed)
        trainer.fit(X, y, epochs=2)
        weights.append(model.state_arrays())
    assert trainer.step.compiler == "cupy-device-step"
    for name in weights[0]:
        np.testing.assert_allclose(weights[1][name], weights[0][name], rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("where", ["fit", "validation"])
def test_a_mask_with_data_parallel_training_is_refused_in_one_line(where):
    from gpubackprop.errors import InputError
    from gpubackprop.nn.layers import Linear
    from gpubackprop.nn.model import Sequential
    from gpubackprop.nn.recurrent import RNN, TimeDistributed

    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(8, 5, 3)), rng.integers(0, 2, (8, 5))
    mask = np.ones((8, 5), dtype=bool)
    mask[:, 3:] = False
    model = Sequential([RNN(4, return_sequences=True), TimeDistributed(Linear(2))], n_inputs=3,
                       device="numpy", dtype="float64", seed=0)
    before = {name: A.copy() for name, A in model.state_arrays().items()}
    trainer = Trainer(model, batch_size=4, verbose=0, distributed=Ranks(0, 1, others=0.0))
    options = dict(mask=mask) if where == "fit" else dict(validation_data=(X, y, mask))
    with pytest.raises(InputError, match="data-parallel training takes no mask") as caught:
        trainer.fit(X, y, epochs=1, **options)
    assert "\n" not in str(caught.value)
    for name, A in model.state_arrays().items():
        np.testing.assert_array_equal(A, before[name], err_msg=name)
    # Without the mask the same distributed run trains.
    trainer.fit(X, y, epochs=1)
    assert trainer.history.epochs == 1
