"""The contention benchmark: its busy process, the one-thread context, its summary."""

from __future__ import annotations

import os

import pytest

from gpubackprop.cpu_threads import OPT_OUT
from gpubackprop.bench import contention
from gpubackprop.bench.config import BenchConfig, load_data


def test_busy_process_runs_inside_the_block_and_is_gone_after():
    with contention.busy_process() as process:
        assert process.poll() is None
    assert process.poll() is not None


@pytest.mark.numba
def test_one_thread_holds_numba_to_one_thread_and_restores_it(monkeypatch):
    import numba

    monkeypatch.delenv(OPT_OUT, raising=False)
    before = numba.get_num_threads()
    with contention.one_thread():
        assert numba.get_num_threads() == 1 and os.environ[OPT_OUT] == "1"
    assert numba.get_num_threads() == before and OPT_OUT not in os.environ


def test_summary_of_fake_times():
    times = {"default": {"alone": [1.0, 2.0, 1.0], "loaded": [1.5, 2.0, 3.0]},
             "one thread": {"alone": [2.0, 2.0, 2.0], "loaded": [2.0, 2.5, 2.0]}}
    section = contention.summarize(times, {"numpy": "absent"}, rounds=3)
    default = section["paths"]["default"]
    assert default["alone_median_s"] == 1.0 and default["loaded_median_s"] == 2.0
    assert default["slowdown_median"] == 1.5  # per round 1.5, 1.0, 3.0
    assert section["default_over_one_thread_alone"] == 0.5
    assert section["default_over_one_thread_loaded"] == 0.8  # 0.75, 0.8, 1.5
    text = contention.markdown(section)
    assert "| default | 1.000 | 2.000 | 1.50x |" in text
    assert "default path ÷ one thread, loaded: 0.80" in text and "skipped numpy: absent" in text


def test_a_short_contention_run_measures_every_path(monkeypatch):
    monkeypatch.delenv("GPUBACKPROP_DATA", raising=False)
    data = load_data(BenchConfig(n_train=256, n_test=10))
    section = contention.run_contention(data, rounds=1, log=lambda line: None)
    assert section["model"] == contention.MODEL
    for name, path in section["paths"].items():
        assert len(path["alone_s"]) == len(path["loaded_s"]) == 1, name
        assert path["alone_median_s"] > 0 and path["loaded_median_s"] > 0
    assert set(section["paths"]) | set(section["skipped"]) == {"default", "one thread", "numpy"}
