"""What this machine lets a test do, and what happens when it cannot.

A test that needs something the machine may lack (Chromium, network namespaces,
root, a system tool) calls :func:`cannot_run` with the reason. On a developer's
machine that is a skip with the reason; under ``CI=true`` (set by ``.ci/run``) it is
a failure, so CI never passes while quietly leaving out a test.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

from twisted.trial.unittest import FailTest, SkipTest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def without_root_powers() -> list[str]:
    """A command prefix that takes away root's power to read and write whatever it
    does not own (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so that file permissions
    hold for the command as for any user; nothing when not root. The uid stays, so
    the checkout need not be readable by another user (a clone in a 0700 temp dir)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        cannot_run("running as root and setpriv is missing")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


def cannot_run(reason: str) -> NoReturn:
    """Skip with ``reason`` here; fail with it in CI."""
    if in_ci():
        raise FailTest(f"CI cannot run this test: {reason}")
    raise SkipTest(reason)
