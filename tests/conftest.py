"""pytest only: run the suite in a scratch directory.

trial runs tests inside ``_trial_temp``; under pytest, trial's ``mktemp()`` paths
are relative to the working directory and would land in the source tree.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _scratch_working_directory() -> Iterator[None]:
    old = os.getcwd()
    scratch = tempfile.mkdtemp(prefix="dfs-tests-")
    os.chdir(scratch)
    try:
        yield
    finally:
        os.chdir(old)
        shutil.rmtree(scratch, ignore_errors=True)
