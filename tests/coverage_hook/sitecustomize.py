"""Starts coverage in every Python process of a `make coverage` run.

This directory is on PYTHONPATH for that run only. (coverage 7.10 and later start
themselves from a .pth file when COVERAGE_PROCESS_START is set: then this finds the
running instance.) A `twistd` node stopped with SIGTERM ends by sending itself the
signal again (to exit with its status), so atexit never runs there: the data is
saved just before a process kills itself.
"""

from __future__ import annotations

import os

import coverage

_coverage = coverage.process_startup() or coverage.Coverage.current()

if _coverage is not None:
    _kill = os.kill

    def _save_then_kill(pid: int, sig: int) -> None:
        if pid == os.getpid() and _coverage is not None:
            _coverage.stop()
            _coverage.save()
        _kill(pid, sig)

    os.kill = _save_then_kill
