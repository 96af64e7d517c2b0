"""python -m gpubackprop.precompile: compiles into Numba's disk cache ahead of a run."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.numba


def test_the_order_names_every_path_and_dtype_once():
    from gpubackprop import precompile

    assert sorted(precompile.ORDER) == sorted((path, dtype) for path in precompile.PATHS
                                        for dtype in precompile.DTYPES)


def test_unknown_paths_are_refused_with_their_names(capsys):
    from gpubackprop import precompile

    with pytest.raises(SystemExit) as exit_info:
        precompile.main(["--paths", "rnn,cnn", "--dtypes", "float16"])
    assert exit_info.value.code == 2
    assert "unknown path or dtype: cnn, float16" in capsys.readouterr().err


def test_a_warmed_signature_loads_from_the_disk_cache_in_another_process(tmp_path):
    # An empty cache: the warm-up compiles the split product into it; a second process
    # then finds it there without compiling (load_compiled stops a compile at its start).
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    warmed = subprocess.run([sys.executable, "-m", "gpubackprop.precompile",
                             "--paths", "product", "--dtypes", "float32"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert warmed.returncode == 0, warmed.stderr[-2000:]
    assert warmed.stdout.startswith("product float32: ")
    probe = textwrap.dedent("""
        import json
        import numpy as np
        from gpubackprop.backends.numba.background import load_compiled, signature_of
        from gpubackprop.backends.numba.split import gemm_blocks
        def cached(dtype):
            A = np.ones((4, 4), dtype)
            return load_compiled(gemm_blocks,
                                 signature_of(gemm_blocks, (A, A, A, False, False, 2, False)))
        print(json.dumps([cached("float32"), cached("float64")]))
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == [True, False]  # float64 was not asked for


def test_without_numba_it_says_why_and_compiles_nothing(monkeypatch, capsys):
    from gpubackprop import precompile
    from gpubackprop.backends import CPUStatus

    monkeypatch.setattr(precompile, "cpu_status",
                        lambda: CPUStatus(False, "Numba is not installed (test)"))
    monkeypatch.setattr(precompile, "warm", lambda *a, **k: pytest.fail("compiled anyway"))
    assert precompile.main([]) == 1
    assert capsys.readouterr().err == \
        "gpubackprop.precompile: nothing to compile: Numba is not installed (test)\n"
