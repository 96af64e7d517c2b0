"""A benchmark runner in a process of its own, driven through a pipe.

Why: PyTorch's CPU wheels load an OpenMP library named ``libgomp.so.1``, and
Numba's threading layer then shares that same loaded copy. OpenMP reads its
wait policy once, as it loads, so in one process either PyTorch runs under the
policy gpubackprop sets for its own threads (:mod:`gpubackprop.cpu_threads`)
or gpubackprop's threads run under PyTorch's (spinning beside a busy process).
In a process of its own, started with the environment as the user set it,
PyTorch runs as its users run it, and the timed epochs still interleave.

The child (``python -m gpubackprop.bench.remote``) reads one JSON request a
line on stdin and answers one JSON line on its own copy of stdout (whatever
the runner prints goes to stderr): first the runner to build, then
``epoch``, ``accuracy`` and ``facts`` until ``quit`` or the end of input.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from ..cpu_threads import OPT_OUT, users_thread_environment
from ..errors import GpubackpropError
from .runners import MODELS, RUNNERS, Runner, Unavailable


class RemoteRunner(Runner):
    """:data:`~.runners.RUNNERS` ``[key]`` on model ``model``, in a child process.

    Parameters
    ----------
    key, model : str
        The runner and the model (:data:`~.runners.MODELS`).
    data : dict
        ``n_train`` and ``n_test``, so the child loads the same data
        (:func:`~.config.load_data` is deterministic).
    options : dict
        The runner's keyword arguments (batch_size, device, seed, optimizer, ...).

    Raises
    ------
    Unavailable
        When the child cannot build the runner (the reason it gave).
    """

    def __init__(self, key: str, model: str, data: dict, options: dict):
        with users_thread_environment():
            environment = dict(os.environ)
        # The child's gpubackprop must not set the wait policy again.
        environment[OPT_OUT] = "1"
        self._process = subprocess.Popen(
            [sys.executable, "-m", "gpubackprop.bench.remote"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=environment, text=True)
        reply = self._call({"key": key, "model": model, "data": data, "options": options})
        if "unavailable" in reply:
            self.close()
            raise Unavailable(reply["unavailable"])
        self.name, self.device = reply["name"], reply["device"]

    def _call(self, request: dict) -> dict:
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
            line = self._process.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            code = self._process.wait()
            raise GpubackpropError(f"the benchmark's runner process ended (exit status {code}) "
                                   f"before answering {request.get('do', 'its set-up')}")
        reply = json.loads(line)
        if "error" in reply:
            raise GpubackpropError(f"the benchmark's runner process failed: {reply['error']}")
        return reply

    def epoch(self) -> float:
        return self._call({"do": "epoch"})["seconds"]

    def accuracy(self) -> float:
        return self._call({"do": "accuracy"})["accuracy"]

    def facts(self) -> dict:
        """The child's runner's :meth:`~.runners.Runner.facts`."""
        return self._call({"do": "facts"})["facts"]

    def close(self) -> None:
        """End the child (it also ends when this process closes its stdin)."""
        if self._process.poll() is None:
            try:
                self._process.stdin.write(json.dumps({"do": "quit"}) + "\n")
                self._process.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def serve(requests, answer) -> None:
    """Build the runner the first request names, then answer each command until ``quit``."""
    from .config import BenchConfig, load_data

    first = json.loads(next(requests))
    try:
        data = load_data(BenchConfig(**first["data"]))
        runner = RUNNERS[first["key"]](MODELS[first["model"]], data, **first["options"])
    except Unavailable as exc:
        answer({"unavailable": str(exc)})
        return
    answer({"name": runner.name, "device": runner.device})
    for line in requests:
        command = json.loads(line).get("do")
        if command == "epoch":
            answer({"seconds": runner.epoch()})
        elif command == "accuracy":
            answer({"accuracy": runner.accuracy()})
        elif command == "facts":
            answer({"facts": runner.facts()})
        else:
            return


def main() -> int:
    # Ctrl-C reaches the whole process group: the parent handles it and closes this
    # child's input, which ends it without a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr  # anything the runner prints stays out of the replies

    def answer(reply: dict) -> None:
        replies.write(json.dumps(reply) + "\n")
        replies.flush()

    try:
        try:
            serve(iter(sys.stdin.readline, ""), answer)
        except Exception as exc:  # reported to the parent, which raises it there
            answer({"error": f"{type(exc).__name__}: {exc}"})
            return 1
    except BrokenPipeError:  # the parent is gone: nobody to answer
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
