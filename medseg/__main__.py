"""``python -m medseg``: the command line (see :mod:`medseg.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
