"""pytest only: run the suite in a scratch directory, and refuse a test without a tier.

trial runs tests inside ``_trial_temp``; under pytest, trial's ``mktemp()`` paths
are relative to the working directory and would land in the source tree.

Every test carries exactly one tier marker (``pytestmark = pytest.mark.unit`` in its
module, or on its class where a module mixes tiers); pyproject.toml lists the tiers.
A test with none, or with two, stops the run at collection, so a new module cannot
forget it and ``make test-fast`` never quietly leaves a unit test out.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

TIERS = ("unit", "inprocess", "processes", "browser", "netns")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wrong = []
    for item in items:
        tiers = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
        if len(tiers) != 1:
            wrong.append(f"  {item.nodeid}: {', '.join(sorted(tiers)) or 'no tier'}")
    if wrong:
        raise pytest.UsageError(
            f"each test needs exactly one tier marker ({', '.join(TIERS)}):\n" + "\n".join(wrong)
        )


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
