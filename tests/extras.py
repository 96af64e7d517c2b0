"""Optional packages of the test extras: a skip where missing, a failure under CI=true."""

import importlib
import os

import pytest


def require(module: str, extra: str):
    """Import ``module``; skip the calling test module without it, unless CI=true (then fail)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"{module} is not installed (the {extra} extra): {exc}",
                    allow_module_level=True)
