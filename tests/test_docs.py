"""Every `dfs` and `twistd ... dfs` command line in README.md and docs/operating.md parses.

The commands' behaviour is run by the process tests (test_client, test_config,
test_backup, test_service, ...) and by `make demo`; this keeps the documented
command lines themselves from drifting from the parsers: a renamed flag or
command fails here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.cli import parser
from dfs_twisted.options import NodeOptions

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", REPO / "docs" / "operating.md"]
COMMANDS = {
    "put", "get", "rm", "ls", "status", "recover", "share", "key", "access",
    "backup", "restore", "network-key", "init", "--version",
}  # fmt: skip
OPTIONAL = re.compile(r"\[([^\]|]*)(\|[^\]]*)?\]")


def command_lines(text: str) -> list[str]:
    """Indented code lines and `inline code` that run dfs or twistd, continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.startswith("    ") or pending:
            line = pending + raw.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            lines.append(line)
    inline = re.findall(r"`((?:[A-Z_]+=\S+ )*(?:\S*/)?(?:dfs|twistd) [^`]+)`", text)
    # Prose names a command (`dfs init`); a command line has arguments.
    lines += [snippet for snippet in inline if len(snippet.split()) >= 3]
    # Comments and what a pipe or && feeds are not part of the command.
    return [re.split(r"  #| \| | && | < ", line)[0].strip() for line in lines]


def words(line: str) -> list[str]:
    line = re.sub(r"\.\.\.$", "status", line)  # `dfs --api URL ... ...`: any command
    line = OPTIONAL.sub(lambda m: m.group(1), line).replace("...", "")
    line = re.sub(r"\$\([^)]*\)", "X", line)
    return shlex.split(line)


class DocumentedCommandTests(SynchronousTestCase):
    def test_dfs_command_lines_parse(self) -> None:
        seen = 0
        for doc in DOCS:
            for line in command_lines(doc.read_text()):
                argv = words(line)
                start = [i for i, w in enumerate(argv) if w == "dfs" or w.endswith("/bin/dfs")]
                if not start or "twistd" in " ".join(argv[: start[-1]]):
                    continue
                args = argv[start[-1] + 1 :]  # the last: `sudo -u dfs .../bin/dfs init`
                if not set(args) & COMMANDS:
                    continue  # prose naming the client (`dfs --node DIR`), not a command line
                try:
                    parser().parse_args(args)
                except SystemExit as e:
                    if e.code != 0:  # 0: --version, --help
                        self.fail(f"{doc.name}: `{line}` does not parse ({e})")
                seen += 1
        self.assertGreater(seen, 30)

    def test_twistd_command_lines_parse(self) -> None:
        seen = 0
        for doc in DOCS:
            for line in command_lines(doc.read_text()):
                argv = words(line)
                if not any(w.endswith("twistd") for w in argv) or "dfs" not in argv:
                    continue
                args = argv[argv.index("dfs") + 1 :]
                options = NodeOptions()
                # The flags only: what they point at (files, ports) is for the process tests.
                options.postOptions = lambda: None  # type: ignore[method-assign]
                try:
                    options.parseOptions(args)
                except Exception as e:  # UsageError
                    self.fail(f"{doc.name}: `{line}` does not parse ({e})")
                seen += 1
        self.assertGreater(seen, 5)
