"""Output paths checked before training; one writer per folder; interrupts and full disks.

Command-line runs here train iris on NumPy for a few iterations (instant). The
signal tests run real subprocesses and send SIGINT, SIGTERM or SIGKILL at
points they announce on stdout.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
from pathlib import Path

import pytest

import gpubackprop.cli.pipeline as pipeline
from gpubackprop.cli.main import main
from gpubackprop.fileio import TEMP_SUFFIX
from gpubackprop.errors import OutputError
from gpubackprop.outputs import LOCK_NAME, OutputLock
from gpubackprop.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
IRIS = ["train", "iris", "--epochs", "3", "--device", "numpy", "--quiet"]


def run_cli(capsys, *arguments):
    code = main([*IRIS, *map(str, arguments)])
    return code, capsys.readouterr().err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpubackprop: error: "), err
    return lines[0]


@pytest.fixture
def no_data_loading(monkeypatch):
    """Fails the test if the run got as far as loading data."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the output paths were checked")

    monkeypatch.setattr(pipeline, "load_dataset", refuse)


# --------------------------------------------------------------- paths, before training
def test_out_that_is_a_file(tmp_path, capsys, no_data_loading):
    (tmp_path / "taken").write_text("x")
    code, err = run_cli(capsys, "--out", tmp_path / "taken")
    assert code == 2 and "--out" in one_line_error(err) and "is a file" in err
    assert (tmp_path / "taken").read_text() == "x"


def test_out_under_a_file(tmp_path, capsys, no_data_loading):
    (tmp_path / "taken").write_text("x")
    code, err = run_cli(capsys, "--out", tmp_path / "taken" / "run")
    assert code == 2 and "lies under" in one_line_error(err)


@pytest.mark.parametrize("option", ["--out", "--plot"])
def test_unwritable_place(tmp_path, capsys, no_data_loading, option):
    """/proc takes no new files, even from root."""
    code, err = run_cli(capsys, option, "/proc/gpubackprop-test/run.png")
    assert code == 2 and "cannot be written" in one_line_error(err)


@pytest.mark.parametrize("code_, text", [(errno.EROFS, "Read-only file system"),
                                        (errno.ENOSPC, "No space left on device"),
                                        (errno.EACCES, "Permission denied")])
def test_read_only_full_or_forbidden_filesystem(tmp_path, capsys, monkeypatch, no_data_loading,
                                                code_, text):
    import gpubackprop.outputs as outputs

    def refuse(*args, **kwargs):
        raise OSError(code_, os.strerror(code_))

    monkeypatch.setattr(outputs.tempfile, "mkstemp", refuse)
    code, err = run_cli(capsys, "--out", tmp_path / "run")
    assert code == 2 and text in one_line_error(err)
    assert not (tmp_path / "run").exists()  # the folder made for the check is gone again


def test_too_little_free_space_is_refused_before_the_first_epoch(tmp_path, capsys, monkeypatch):
    import gpubackprop.outputs as outputs

    real = os.statvfs

    class Full:
        def __init__(self, stats):
            self.f_frsize, self.f_bavail = stats.f_frsize, 1

    monkeypatch.setattr(outputs.os, "statvfs", lambda path: Full(real(path)))
    monkeypatch.setattr(pipeline.Trainer, "fit", lambda *a, **k: pytest.fail("trained"))
    code, err = run_cli(capsys, "--out", tmp_path / "run")
    assert code == 2 and "free some space" in one_line_error(err)


def test_plot_that_is_a_folder(tmp_path, capsys, no_data_loading):
    code, err = run_cli(capsys, "--plot", tmp_path)
    assert code == 2 and "is a folder; it must name a file" in one_line_error(err)


def test_a_folder_name_with_a_dot_is_a_folder(tmp_path, capsys):
    code, err = run_cli(capsys, "--out", tmp_path / "runs" / "lr0.01")
    assert code == 0, err
    assert (tmp_path / "runs" / "lr0.01" / "checkpoint.json").is_file()
    assert not (tmp_path / "runs" / "lr0.01" / LOCK_NAME).exists()


def test_disk_filling_up_during_training_keeps_the_last_checkpoint(tmp_path, capsys,
                                                                    monkeypatch):
    import gpubackprop.training.checkpoint as checkpoint

    real_write_json, calls = checkpoint.write_json, []

    def fills_up(path, data):
        calls.append(path)
        if len(calls) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_json(path, data)

    monkeypatch.setattr(checkpoint, "write_json", fills_up)
    # A checkpoint per iteration (full-batch runs otherwise save by time and at the end).
    code, err = run_cli(capsys, "--out", tmp_path / "run", "--checkpoint-every", "1")
    line = one_line_error(err)
    assert code == 2 and "No space left on device" in line
    assert "the checkpoint saved before is intact" in line
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run", device="numpy").history.epochs == 1
    assert len(list((tmp_path / "run").glob("checkpoint-*.npz"))) == 1
    assert not list((tmp_path / "run").glob(f".*{TEMP_SUFFIX}"))


# ------------------------------------------------------------------ one writer per folder
HOLDER = textwrap.dedent("""
    import fcntl, json, os, socket, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": "now"}).encode())
    print("holding", flush=True)
    time.sleep(60)
""")


def test_a_second_training_on_the_same_out_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out / LOCK_NAME)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        code, err = run_cli(capsys, "--out", out)
        line = one_line_error(err)
        assert code == 2 and f"is in use by another training (pid {holder.pid} on host" in line
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "checkpoint.json").exists()


def test_the_python_api_takes_the_same_lock(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    config = pipeline.TrainConfig.for_dataset("iris", epochs=3, device="numpy")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out / LOCK_NAME)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(OutputError) as raised:
            pipeline.run(config, verbose=0, out=out)
        assert str(raised.value).startswith(
            f"out {out} is in use by another training (pid {holder.pid} on host")
        assert "\n" not in str(raised.value)
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "checkpoint.json").exists()
    pipeline.run(config, verbose=0, out=out)  # the holder is gone: the lock is free again
    assert (out / "checkpoint.json").is_file() and not (out / LOCK_NAME).exists()


def test_the_lock_nests_in_one_thread_and_refuses_another(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    refusals = []

    def other_thread():
        try:
            with OutputLock(out, "out"):
                pass
        except OutputError as exc:
            refusals.append(str(exc))

    with OutputLock(out, "out") as outer:
        with OutputLock(out, "out") as inner:
            assert outer.outermost and not inner.outermost
        assert (out / LOCK_NAME).exists()  # the inner exit keeps the outer lock
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(refusals) == 1 and "is in use by another training (pid" in refusals[0]
    assert "another thread" in refusals[0]
    assert not (out / LOCK_NAME).exists()


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (out / LOCK_NAME).write_text(json.dumps({"pid": int(gone), "host": "here",
                                             "started": "then"}))
    (out / f".checkpoint.json.abc{TEMP_SUFFIX}").write_text("half")
    code, err = run_cli(capsys, "--out", out)
    assert code == 0, err
    assert f"note: {out} was locked by pid {gone} on host here" in err
    assert "removed 1 file(s) an interrupted run left" in err
    assert not list(out.glob(f".*{TEMP_SUFFIX}")) and not (out / LOCK_NAME).exists()


# ------------------------------------------------------------------------------ signals
#: Runs the CLI with hooks that announce where it is on stdout and then wait there.
RUNNER = textwrap.dedent("""
    import os, sys, time
    import gpubackprop.fileio as fileio
    from gpubackprop.training.callbacks import ModelCheckpoint
    from gpubackprop.cli.main import main
    where = sys.argv[1]
    real_fsync = fileio.os.fsync
    if where == "epoch":
        def begin(self, trainer, epoch):
            if epoch == 2:
                print("in epoch 2", flush=True)
                time.sleep(60)
        ModelCheckpoint.on_epoch_begin = begin
    elif where == "write":
        def slow_fsync(fd):
            real_fsync(fd)
            if ".checkpoint-" in os.readlink(f"/proc/self/fd/{fd}"):  # the arrays' temporary
                print("writing", flush=True)
                time.sleep(60)
        fileio.os.fsync = slow_fsync
    sys.exit(main(["train", "iris", "--epochs", "3", "--device", "numpy", "--quiet",
                   "--out", sys.argv[2], "--checkpoint-every", "1"]))
""")


def start(where, out):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-c", RUNNER, where, str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
    line = process.stdout.readline().strip()
    assert line in ("in epoch 2", "writing"), process.communicate()
    return process


@pytest.mark.parametrize("sig, code, said", [(signal.SIGTERM, 143, "terminated by SIGTERM"),
                                              (signal.SIGINT, 130, "interrupted")])
def test_signal_during_training_keeps_the_last_epoch(tmp_path, sig, code, said):
    out = tmp_path / "run"
    process = start("epoch", out)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code
    assert err.strip() == (f"gpubackprop: {said}; the checkpoint of the last finished epoch "
                           f"is intact in {out} (--resume {out} continues)")
    assert load_checkpoint(out, device="numpy").history.epochs == 1
    assert not (out / LOCK_NAME).exists() and not list(out.glob(f".*{TEMP_SUFFIX}"))


def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "run"
    process = start("write", out)
    assert list(out.glob(f".*{TEMP_SUFFIX}"))  # caught in the middle of a write
    process.terminate()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and "Traceback" not in err
    assert not list(out.glob(f".*{TEMP_SUFFIX}")) and not (out / LOCK_NAME).exists()


def test_kill_9_leftovers_are_cleaned_by_the_next_run(tmp_path, capsys):
    out = tmp_path / "run"
    process = start("write", out)
    process.kill()
    process.wait()
    assert list(out.glob(f".*{TEMP_SUFFIX}")) and (out / LOCK_NAME).exists()
    code, err = run_cli(capsys, "--out", out)
    assert code == 0, err
    assert f"was locked by pid {process.pid}" in err and "removed 1 file(s)" in err
    assert not list(out.glob(f".*{TEMP_SUFFIX}")) and not (out / LOCK_NAME).exists()
    assert len(list(out.glob("checkpoint-*.npz"))) == 1


#: ``python -m gpubackprop`` with a "ready" line just before gpubackprop's own start-up
#: code runs (the package itself holds only the error classes; its import is done first).
STARTER = textwrap.dedent("""
    import runpy, sys
    import gpubackprop
    sys.argv = ["gpubackprop", *sys.argv[1:]]
    print("ready", flush=True)
    runpy.run_module("gpubackprop", run_name="__main__", alter_sys=True)
""")


@pytest.mark.parametrize("delay", [0.02, 0.05, 0.2, 0.5])
def test_interrupt_during_start_up_exits_130_without_a_traceback(tmp_path, delay):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-c", STARTER, "train", "digits", "--out",
                                str(tmp_path / "run"), "--quiet"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def console_script_entry() -> tuple[str, str]:
    """``(module, function)`` of the ``gpubackprop`` console script pyproject.toml declares."""
    with open(REPO / "pyproject.toml", "rb") as file:
        entry = tomllib.load(file)["project"]["scripts"]["gpubackprop"]
    module, _, function = entry.partition(":")
    return module, function


#: The launcher pip writes for a console script, with a "ready" line once the package
#: itself (the error classes only) is imported, just before the entry point's module.
#: Before that line lie Python's own start-up, where Python prints a KeyboardInterrupt
#: traceback whatever a package does, and the package's standard-library imports.
LAUNCHER = textwrap.dedent("""
    import re, sys
    import gpubackprop
    print("ready", flush=True)
    from {module} import {function}
    sys.argv[0] = "gpubackprop"
    sys.exit({function}())
""")


#: Sends this process SIGINT when the import of ``gpubackprop.cli.main`` begins.
INTERRUPT_ON_IMPORT = textwrap.dedent("""
    import importlib.abc, os, signal

    class InterruptOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "gpubackprop.cli.main":
                os.kill(os.getpid(), signal.SIGINT)

    sys.meta_path.insert(0, InterruptOnImport())
""")


def start_console_script(*prelude: str):
    module, function = console_script_entry()
    return subprocess.Popen(
        [sys.executable, "-c", "\n".join([*prelude, LAUNCHER.format(module=module,
                                                                  function=function)]),
         "train", "digits", "--epochs", "1000", "--quiet"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))


def assert_interrupted(process):
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip() == "gpubackprop: interrupted", err


def test_interrupt_while_the_console_script_imports_the_command_line():
    process = start_console_script("import sys", INTERRUPT_ON_IMPORT)
    assert process.stdout.readline().strip() == "ready"
    assert_interrupted(process)


@pytest.mark.parametrize("delay", [0.02, 0.04, 0.08])
def test_interrupt_while_the_console_script_starts_exits_130_without_a_traceback(delay):
    # The entry point's own module loads in about 1 ms; the command line's imports in ~60.
    process = start_console_script()
    assert process.stdout.readline().strip() == "ready"
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    assert_interrupted(process)
