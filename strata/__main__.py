"""``python -m strata``: the ``strata`` command (see ``strata.cli``)."""

from strata.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
