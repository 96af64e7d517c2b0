"""The command line: ``gpubackprop info | check | train | bench``."""

from .main import main

__all__ = ["main"]
