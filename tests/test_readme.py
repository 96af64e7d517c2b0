"""README.md runs as written: every Python block executes, every shown command parses."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gpubackprop.cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(encoding="utf-8"),
                      flags=re.S | re.M)


PYTHON_BLOCKS = [pytest.param(code, id=f"{path.name}-{i}")
                 for path in DOCS for i, code in enumerate(_blocks(path, "python"))]


def _commands() -> list:
    found = []
    for path in DOCS:
        for block in _blocks(path, "(?:bash)?"):
            for line in block.splitlines():
                line = line.strip()
                if line.startswith("$ "):
                    line = line[2:]
                line = line.split("  #")[0].strip()
                if line.startswith("gpubackprop "):
                    found.append(pytest.param(line, id=f"{path.name}: {line[:60]}"))
    return found


def test_readme_has_python_code_and_commands():
    assert PYTHON_BLOCKS, "README.md shows no Python code"
    assert _commands(), "README.md shows no gpubackprop command"


@pytest.mark.parametrize("code", PYTHON_BLOCKS)
def test_python_block_runs_as_written(code, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"the block failed:\n{code}\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("command", _commands())
def test_shown_command_parses(command):
    words = shlex.split(command)[1:]
    try:
        build_parser().parse_args(words)
    except SystemExit as exc:  # argparse exits 2 on an unknown option or choice
        pytest.fail(f"`{command}` does not parse (exit {exc.code})")
