"""cannot_run: a test that cannot run here skips on a developer's machine, fails in CI."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from twisted.trial.unittest import FailTest, SkipTest, SynchronousTestCase

from .environment import cannot_run, in_ci

pytestmark = pytest.mark.unit


class CannotRunTests(SynchronousTestCase):
    def with_ci(self, value: str | None) -> None:
        old = os.environ.get("CI")
        if value is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = value
        self.addCleanup(self.restore, old)

    @staticmethod
    def restore(old: str | None) -> None:
        if old is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = old

    def test_fails_under_ci(self) -> None:
        for value in ("true", "1", "TRUE", "yes"):
            self.with_ci(value)
            self.assertTrue(in_ci())
            with self.assertRaises(FailTest) as raised:
                cannot_run("no chromium here")
            self.assertIn("no chromium here", str(raised.exception))
            self.assertIn("CI", str(raised.exception))

    def test_skips_elsewhere(self) -> None:
        for value in (None, "", "false", "0"):
            self.with_ci(value)
            self.assertFalse(in_ci())
            with self.assertRaises(SkipTest) as raised:
                cannot_run("no chromium here")
            self.assertEqual(str(raised.exception), "no chromium here")


class LayoutTests(SynchronousTestCase):
    def test_no_test_module_imports_another(self) -> None:
        """What several test modules share lives in a helper module (fakes, inprocess,
        shared, loopback...), so each test module can move or go on its own."""
        here = Path(__file__).parent
        pattern = re.compile(
            r"^\s*(from\s+(\.|tests\.)test_\w+\s+import|import\s+tests\.test_)", re.M
        )
        offenders = [
            p.name for p in sorted(here.glob("test_*.py")) if pattern.search(p.read_text())
        ]
        self.assertEqual(offenders, [])
