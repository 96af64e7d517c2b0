import sys

try:
    from .cli.main import main
except KeyboardInterrupt:  # Ctrl-C while the command line is still being imported
    print("gpubackprop: interrupted", file=sys.stderr)
    sys.exit(130)
sys.exit(main())
