"""Headless Chromium driven over the DevTools protocol, for the status page tests.

The browser is started with ``--remote-debugging-pipe``: it reads commands on its
file descriptor 3 and writes answers and events on 4, as NUL-terminated JSON. No
port is opened and no library is needed. The browser runs in its own session and
is stopped by its process group id; its profile is a temp dir removed afterwards.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

PATIENCE = 60.0  # seconds before a condition that never comes true fails the test


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(AssertionError):
    pass


_ON_3_AND_4 = (
    "import os, sys; r, w = map(int, sys.argv[1:3]); os.dup2(r, 3); os.dup2(w, 4);"
    " os.close(r); os.close(w); os.execvp(sys.argv[3], sys.argv[3:])"
)


def _above_9(fd: int) -> int:
    """The same file on a descriptor number of 10 or more (the old one is closed)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Browser:
    """One headless Chromium with one page (tab), driven synchronously."""

    def __init__(self, binary: str, width: int = 1280, height: int = 900) -> None:
        self.profile = tempfile.mkdtemp(prefix="dfs-chromium-")
        commands_read, self._commands = os.pipe()
        self._answers, answers_write = os.pipe()
        # The child's ends go above 9 first, so that putting them on 3 and 4 below
        # never overwrites one with the other.
        commands_read, answers_write = _above_9(commands_read), _above_9(answers_write)
        argv = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        # A small Python puts the two pipe ends on fds 3 and 4, then becomes Chromium.
        self.process = subprocess.Popen(
            [sys.executable, "-c", _ON_3_AND_4, str(commands_read), str(answers_write), *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(commands_read, answers_write),
            env={**os.environ, "HOME": self.profile},
            start_new_session=True,
        )
        os.close(commands_read)
        os.close(answers_write)
        self._buffer = b""
        self._next_id = 0
        self._answered: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        # Called with each Fetch.requestPaused event (see `intercept`).
        self._on_paused: Callable[[dict[str, Any]], None] | None = None
        try:
            target = self.send("Target.createTarget", url="about:blank")["targetId"]
            attached = self.send("Target.attachToTarget", targetId=target, flatten=True)
            self.session = attached["sessionId"]
            self.send("Page.enable", session=True)
            self.send("Runtime.enable", session=True)
            # A page in the background gets no focus, and the clipboard needs it.
            self.send("Emulation.setFocusEmulationEnabled", enabled=True, session=True)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ protocol

    def send(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """One command; its result (BrowserError if it failed)."""
        self._next_id += 1
        ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + PATIENCE
        # An event handler may send commands of its own meanwhile: answers are kept by id.
        while ident not in self._answered:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"chromium did not answer {method} in time")
            self._read(left)
        answer = self._answered.pop(ident)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    def _read(self, timeout: float) -> None:
        """Wait up to ``timeout`` for what Chromium writes; handle each whole message."""
        ready, _, _ = select.select([self._answers], [], [], max(0.0, timeout))
        if not ready:
            return
        data = os.read(self._answers, 1 << 20)
        if not data:
            raise BrowserError("chromium closed its pipe (it exited)")
        self._buffer += data
        while b"\0" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\0", 1)
            message: dict[str, Any] = json.loads(raw)
            if "id" in message:
                self._answered[message["id"]] = message
            elif message.get("method") == "Fetch.requestPaused" and self._on_paused:
                self._on_paused(message["params"])
            else:
                self.events.append(message)

    def pump(self, seconds: float) -> None:
        """Handle events for a while (a paused request waits for us)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._read(left)

    # --------------------------------------------------------------------- page

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url, session=True)

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
            userGesture=True,
            session=True,
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, patience: float = PATIENCE) -> Any:
        """Poll until ``expression`` is truthy in the page; return its value."""
        deadline = time.monotonic() + patience
        while True:
            try:
                value = self.eval(expression)
            except BrowserError:
                value = None  # the page is still loading
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"gave up after {patience:.0f}s waiting for {what}")
            self.pump(0.1)

    def click(self, element_id: str) -> None:
        """A real mouse click (press and release) in the middle of the element."""
        box = self.eval(
            f"(() => {{ const e = document.getElementById({json.dumps(element_id)});"
            " e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2, r.width, r.height]; })()"
        )
        x, y, width, height = box
        if width <= 0 or height <= 0:
            raise BrowserError(f"#{element_id} is not visible")
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=x,
                y=y,
                button="left",
                clickCount=1,
                session=True,
            )

    def grant_clipboard(self, origin: str) -> None:
        self.send(
            "Browser.grantPermissions",
            origin=origin,
            permissions=["clipboardReadWrite", "clipboardSanitizedWrite"],
        )

    def intercept(self, url_pattern: str, change: Callable[[str, Any], Any]) -> None:
        """Answer requests matching ``url_pattern`` with ``change(url, json_body)``."""

        def paused(params: dict[str, Any]) -> None:
            request = params["requestId"]
            body = self.send("Fetch.getResponseBody", requestId=request, session=True)
            raw = base64.b64decode(body["body"]) if body.get("base64Encoded") else body["body"]
            value = change(params["request"]["url"], json.loads(raw))
            self.send(
                "Fetch.fulfillRequest",
                requestId=request,
                responseCode=params.get("responseStatusCode", 200),
                responseHeaders=params.get("responseHeaders", []),
                body=base64.b64encode(json.dumps(value).encode()).decode(),
                session=True,
            )

        self._on_paused = paused
        self.send(
            "Fetch.enable",
            patterns=[{"urlPattern": url_pattern, "requestStage": "Response"}],
            session=True,
        )

    def close(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        for fd in (self._commands, self._answers):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)
