import signal
import sys


def _interrupted() -> None:
    print("gpubackprop: interrupted", file=sys.stderr)
    sys.exit(130)


# Ctrl-C while the command line is still being imported is held until the import ends:
# a KeyboardInterrupt raised inside an extension module's import (NumPy's, say) can
# surface as that module's ImportError, with a traceback.
_held = []
_previous = signal.signal(signal.SIGINT, lambda signum, frame: _held.append(signum))
try:
    from .cli.main import main
except KeyboardInterrupt:
    _interrupted()
finally:
    signal.signal(signal.SIGINT, _previous)
if _held:
    _interrupted()
sys.exit(main())
