"""The one generated CUDA header: current, complete, and its check catches a stale copy."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpubackprop.backends.cupy import constants_header
from gpubackprop.backends.cupy import library as _kernels
from gpubackprop.nn.activations import CODES
from gpubackprop.nn.update_rules import COMMON_ENTRIES, UPDATE_RULES, UpdateRule

REPO = Path(__file__).resolve().parents[1]
CONSTANT = re.compile(r"^constexpr int (\w+) = (\d+);$", re.MULTILINE)


def expected_constants() -> dict[str, int]:
    """Every constant the header must hold, straight from the registries."""
    expected = {f"GBP_ACT_{name.upper()}": code for name, code in CODES.items()}
    for rule in UPDATE_RULES.values():
        expected[f"GBP_RULE_{rule.name.upper()}"] = rule.code
        for entry in rule.layout:
            prefix = "GBP" if entry in COMMON_ENTRIES else f"GBP_{rule.name.upper()}"
            expected[f"{prefix}_{entry.upper()}"] = rule.index(entry)
    return expected


def test_the_committed_header_is_the_generated_one(capsys):
    path = constants_header.header_path()
    assert path == _kernels.kernel_dir() / _kernels.CONSTANTS_HEADER
    assert _kernels.CONSTANTS_HEADER in _kernels.HEADER_FILES
    assert path.read_text(encoding="utf-8") == constants_header.render(), \
        f"run: {constants_header.COMMAND}"
    assert constants_header.main(["--check"]) == 0
    assert capsys.readouterr().out == f"{path}: up to date\n"


def test_every_activation_code_rule_code_and_state_index_is_in_the_header():
    text = constants_header.header_path().read_text(encoding="utf-8")
    found = [(name, int(value)) for name, value in CONSTANT.findall(text)]
    assert len(found) == len(dict(found)), "a constant is defined twice"
    assert dict(found) == expected_constants()
    assert len(found) == text.count("constexpr"), "every constant has the form the test reads"


@pytest.mark.parametrize("edit", [("GBP_ACT_SILU = 4;", "GBP_ACT_SILU = 5;"),
                                  ("GBP_ADAM_STEP_SIZE = 11;", "GBP_ADAM_STEP_SIZE = 10;")],
                         ids=["activation-code", "state-index"])
def test_check_reports_a_stale_header_and_writing_fixes_it(tmp_path, monkeypatch, capsys, edit):
    stale = tmp_path / _kernels.CONSTANTS_HEADER
    text = constants_header.render()
    assert edit[0] in text
    stale.write_text(text.replace(*edit), encoding="utf-8")
    monkeypatch.setattr(constants_header, "header_path", lambda: stale)
    assert constants_header.main(["--check"]) == 1
    assert capsys.readouterr().out == \
        f"{stale}: out of date; run {constants_header.COMMAND}\n"
    assert constants_header.main([]) == 0
    assert stale.read_text(encoding="utf-8") == text
    assert constants_header.main(["--check"]) == 0


def test_check_reports_a_missing_header(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(constants_header, "header_path", lambda: tmp_path / "absent.h")
    assert constants_header.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().out


def test_two_registry_names_that_give_one_constant_are_refused(monkeypatch):
    monkeypatch.setattr(constants_header, "UPDATE_RULES",
                        {"act": UpdateRule("act", 0, entries=("relu",))})
    with pytest.raises(ValueError, match="the CUDA constant GBP_ACT_RELU twice"):
        constants_header.render()


def test_the_command_checks_the_committed_header():
    assert constants_header.COMMAND == f"python -m {constants_header.__name__}"
    result = subprocess.run([sys.executable, "-m", constants_header.__name__, "--check"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": up to date")
