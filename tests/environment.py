"""What this machine lets a test do, and what happens when it cannot.

A test that needs something the machine may lack (Chromium, network namespaces,
root, a system tool) calls :func:`cannot_run` with the reason. On a developer's
machine that is a skip with the reason; under ``CI=true`` (set by ``.ci/run``) it is
a failure, so CI never passes while quietly leaving out a test.
"""

from __future__ import annotations

import os
from typing import NoReturn

from twisted.trial.unittest import FailTest, SkipTest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cannot_run(reason: str) -> NoReturn:
    """Skip with ``reason`` here; fail with it in CI."""
    if in_ci():
        raise FailTest(f"CI cannot run this test: {reason}")
    raise SkipTest(reason)
