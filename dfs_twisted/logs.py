"""How a node writes its log: twistd's text lines, or JSON lines (``--log-format json``).

JSON lines carry every event's fields (peer, org, blob id, sizes, reasons), one
event per line, for log shippers. Like the text log, they never hold a file name
or a key: events only ever name blobs by id.

twistd takes a log observer factory by dotted name (``--logger``) and calls it
without arguments, so the file it should write to is kept here, set once from
the command line.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver
from twisted.python.logfile import LogFile

JSON_OBSERVER = "dfs_twisted.logs.json_observer"
logfile: str | None = None  # twistd's --logfile, when JSON lines go to a file


def json_observer() -> ILogObserver:
    """JSON lines to twistd's --logfile, or stdout."""
    if not logfile or logfile == "-":
        return jsonFileLogObserver(sys.stdout, recordSeparator="")
    return jsonFileLogObserver(LogFile.fromFullPath(logfile), recordSeparator="")
