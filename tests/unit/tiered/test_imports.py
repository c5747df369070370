"""Imports point one way: ``broker → tiered → bookie (client) → strata``. Tiered storage never
imports the broker, the SDK client or the tests."""

from __future__ import annotations

import subprocess
import sys


def test_tiered_imports_neither_the_broker_nor_the_sdk() -> None:
    code = (
        "import sys, tiered, tiered.s3, tiered.filesystem, tiered.offloader, tiered.reader; "
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
        "('broker', 'tests')} | ({'strata.client'} & set(sys.modules))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
