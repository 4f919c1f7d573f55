"""The node's log: plain JSON objects, a least level, repeats held back, each line's node."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    LogPublisher,
    formatEvent,
    formatTime,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.launcher import BIN, NodeProcess, free_port
from dfs_twisted.logs import NodeTags, RepeatFilter, json_line, observer_for

from .environment import cannot_run
from .shared import wait_until

REPO = Path(__file__).resolve().parent.parent


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "log_format": "peer {org} refused: {reason}",
        "log_level": LogLevel.warn,
        "log_namespace": "dfs_twisted.protocol",
        "log_time": 1_000_000.0,
        "org": "acme",
        "reason": "wrong network key",
    }
    return base | fields


@pytest.mark.unit
class JsonLineTests(SynchronousTestCase):
    def test_plain_object(self) -> None:
        record = json.loads(json_line(event(size=12, blob=b"\xffab")))
        self.assertEqual(list(record)[:4], ["time", "level", "logger", "msg"])
        self.assertEqual(record["time"], "1970-01-12T13:46:40.000Z")
        self.assertEqual(record["level"], "warn")
        self.assertEqual(record["logger"], "dfs_twisted.protocol")
        self.assertEqual(record["msg"], "peer acme refused: wrong network key")
        self.assertEqual((record["org"], record["size"]), ("acme", 12))
        self.assertEqual(record["blob"], "\\xffab")
        self.assertFalse([k for k in record if k.startswith("log_") or "uuid" in k])

    def test_failure_and_clashing_fields(self) -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            failure = Failure()
        record = json.loads(json_line(event(log_failure=failure, msg="mine", time=3)))
        self.assertEqual(record["error"], "boom")
        self.assertIn("ValueError", record["traceback"])
        self.assertEqual((record["field_msg"], record["field_time"]), ("mine", 3))


@pytest.mark.unit
class ObserverTests(SynchronousTestCase):
    def lines(self, level: LogLevel, events: list[dict[str, Any]], fmt: str = "json") -> list[str]:
        out = io.StringIO()
        observer = observer_for(fmt, level, out)
        for e in events:
            observer(e)
        return out.getvalue().splitlines()

    def test_least_level(self) -> None:
        events = [event(log_level=level) for level in LogLevel.iterconstants()]
        levels = [json.loads(line)["level"] for line in self.lines(LogLevel.warn, events)]
        self.assertEqual(levels, ["warn", "error", "critical"])

    def test_text_lines_name_the_node(self) -> None:
        [line] = self.lines(LogLevel.info, [event(log_node="node:3000")], fmt="text")
        self.assertIn("[node:3000 dfs_twisted.protocol#warn] peer acme refused", line)

    def test_text_lines_carry_twistds_time_stamp(self) -> None:
        # Worked out once a second (logs._line_time), it stays twistd's own.
        times = [1_700_000_000.25, 1_700_000_000.75, 1_700_000_001.5]
        lines = self.lines(
            LogLevel.info, [event(log_time=t, log_level=LogLevel.info) for t in times], fmt="text"
        )
        self.assertEqual([line.split(" ")[0] for line in lines], [formatTime(t) for t in times])

    def test_repeated_warnings_are_held_back(self) -> None:
        out: list[dict[str, Any]] = []
        repeats = RepeatFilter(cast(ILogObserver, out.append), window=600)
        for second in range(0, 300, 10):  # 30 identical warnings in 5 minutes
            repeats(event(log_time=1000.0 + second))
        repeats(event(log_time=1100.0, reason="another reason"))  # not identical
        repeats(event(log_time=1100.0, log_level=LogLevel.info))  # not a warning
        self.assertEqual(len(out), 3)
        repeats(event(log_time=1000.0 + 601))  # the window has passed
        self.assertEqual(len(out), 4)
        self.assertEqual(out[-1]["repeated"], 29)
        self.assertIn("(29 more like this held back)", formatEvent(out[-1]))


class Owner:
    def __init__(self, log: Logger) -> None:
        self.log = log

    def act(self) -> None:
        self.log.info("acting")


class Connection:
    """Like a peer connection: it reaches its node through its factory's handler."""

    def __init__(self, factory: object, log: Logger) -> None:
        self.factory = factory
        self.log = log

    def received(self) -> None:
        self.log.info("received")


class Factory:
    def __init__(self, handler: object) -> None:
        self.handler = handler


@pytest.mark.unit
class NodeTagTests(SynchronousTestCase):
    def test_events_are_tagged_with_the_node_on_the_stack(self) -> None:
        publisher = LogPublisher()
        seen: list[dict[str, Any]] = []
        tags = NodeTags()
        publisher.addObserver(cast(ILogObserver, tags))
        publisher.addObserver(cast(ILogObserver, seen.append))
        log = Logger(observer=publisher)
        first, second, stranger = Owner(log), Owner(log), Owner(log)
        tags.register("node:3000", first)
        tags.register("node:4000", second)
        first.act()
        second.act()
        stranger.act()
        Connection(Factory(second), log).received()
        self.assertEqual(
            [e.get("log_node") for e in seen], ["node:3000", "node:4000", None, "node:4000"]
        )


@pytest.mark.processes
class NodeLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dfs-logs-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_json_lines_and_level(self) -> None:
        absent = free_port()  # a peer that is not there: the retry line
        node = NodeProcess(free_port(), self.dir / "node", [absent], extra=["--log-format", "json"])
        self.addCleanup(node.stop)
        node.start().wait_ready()
        wait_until(lambda: "dialling again" in node.log_path.read_text(), "a retry line")
        node.stop()
        records = [json.loads(line) for line in node.log_path.read_text().splitlines()]
        for record in records:
            self.assertEqual(list(record)[:4], ["time", "level", "logger", "msg"], record)
            self.assertFalse([k for k in record if k.startswith("log_") or "uuid" in k], record)
        [listening] = [r for r in records if r["logger"] == "dfs_twisted.node"]
        self.assertEqual((len(listening["node_id"]), listening["port"]), (64, node.port))
        self.assertEqual(listening["node"], f"node:{node.port}")
        retries = [r for r in records if "dialling again" in r["msg"]]
        self.assertIn(
            f"peer 127.0.0.1:{absent} not connected: dialling again in", retries[0]["msg"]
        )
        self.assertNotIn("object at 0x", node.log_path.read_text())

        quiet = NodeProcess(
            free_port(), self.dir / "quiet", extra=["--log-format", "json", "--log-level", "warn"]
        )
        self.addCleanup(quiet.stop)
        quiet.start().wait_ready()
        quiet.stop()
        levels = {json.loads(line)["level"] for line in quiet.log_path.read_text().splitlines()}
        self.assertLessEqual(levels, {"warn", "error", "critical"})

    def test_three_nodes_tac_lines_say_which_node(self) -> None:
        busy = []
        for port in (3000, 4000, 5000):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    busy.append(port)
        if busy:
            cannot_run(f"tac/three_nodes.tac needs the ports 3000-5000; busy: {busy}")
        log = self.dir / "tac.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DFS_")}
        env["DFS_ROOT"] = str(self.dir)
        tac = str(REPO / "tac" / "three_nodes.tac")
        process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", f"--logfile={log}", "-y", tac],
            env=env,
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def stop() -> None:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                process.wait(30)

        self.addCleanup(stop)

        def linked() -> bool:
            text = log.read_text() if log.exists() else ""
            return text.count("connected at") >= 6

        wait_until(linked, "the three nodes to connect")
        stop()
        lines = log.read_text().splitlines()
        for port in (3000, 4000, 5000):
            [listening] = [line for line in lines if f"listening on 127.0.0.1:{port}," in line]
            self.assertIn(f"[node:{port} dfs_twisted.node#info]", listening)
        # Every line the nodes' code wrote names its node; what is left is twistd's own.
        from_nodes = [line for line in lines if "[dfs_twisted." in line or "[-]" in line]
        untagged = [line for line in from_nodes if "Loading" not in line and "Loaded" not in line]
        self.assertEqual(untagged, [])
        connected = [line for line in lines if "connected at" in line]
        self.assertEqual(len({line.split("[node:")[1][:4] for line in connected}), 3)
