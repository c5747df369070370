"""``python -m strata`` and the ``strata`` console script: the ``strata`` command (``strata.cli``).

gRPC's process-wide defaults (``strata.grpc_defaults``) are set here, before anything imports
grpc.
"""

from strata.grpc_defaults import set_default_experiments

set_default_experiments()

from strata.cli import main  # noqa: E402  (after the gRPC defaults, on purpose)

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
