"""`make coverage`'s summary: statement coverage of the parts issue reports name.

Usage: python tests/coverage_groups.py DATA_FILE (a combined coverage data file).
"""

from __future__ import annotations

import sys
from pathlib import Path

import coverage

GROUPS: dict[str, tuple[str, ...]] = {
    "dfs_twisted/files/": ("dfs_twisted/files/",),
    "peer protocol (protocol, mux, handshake, liveness)": tuple(
        f"dfs_twisted/{m}.py" for m in ("protocol", "mux", "handshake", "liveness")
    ),
    "HTTP API (api, apiserver)": ("dfs_twisted/api.py", "dfs_twisted/apiserver.py"),
    "total": ("dfs_twisted/",),
}


def main(data_file: str) -> None:
    cov = coverage.Coverage(data_file=data_file)
    cov.load()
    root = Path.cwd()
    totals = {group: [0, 0] for group in GROUPS}  # statements, missed
    for measured in cov.get_data().measured_files():
        path = Path(measured)
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else measured
        _, statements, _, missing, _ = cov.analysis2(measured)
        for group, prefixes in GROUPS.items():
            if rel.startswith(prefixes):
                totals[group][0] += len(statements)
                totals[group][1] += len(missing)
    for group, (counted, missed) in totals.items():
        share = 100.0 * (counted - missed) / counted if counted else 0.0
        print(f"{share:5.1f}%  {counted - missed:5d}/{counted:<5d}  {group}")


if __name__ == "__main__":
    main(sys.argv[1])
