"""The status page at ``GET /``: its HTML, and the page driven in headless Chromium
against a real 3-node network (node processes on free ports, stopped by PID).

Chromium gets the API token the way a script would: once, in the URL fragment
(``/#token=...``), which the browser never sends to the server; the page moves it into
sessionStorage. ``--dump-dom`` prints the DOM after the page's script has polled the
API within ``--virtual-time-budget``. The browser tests skip when no Chromium is
installed (``.ci/run`` installs Debian's).
"""

from __future__ import annotations

import base64
import hashlib
import html
import http.server
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.launcher import NodeProcess, free_port, start_network
from dfs_twisted.page import status_page

from .browser import Browser, chromium_binary
from .environment import cannot_run
from .shared import SeedNetwork, SharedFixture, wait_until

FILE_NAME = "status page <check> & co.txt"
LATE_NAME = "lost by a peer.bin"
CHROMIUM_TIMEOUT = 120


class Dom(HTMLParser):
    """What the tests look at in a page: rows by class, elements by id, all text."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[tuple[str, list[str]]] = []
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.text: list[str] = []
        self._row: tuple[str, list[str]] | None = None
        self._cell: list[str] | None = None
        self.feed(source)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.by_id[str(values["id"])] = values
        if tag == "tr":
            self._row = (values.get("class") or "", [])
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row[1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def rows_of(self, cls: str) -> list[list[str]]:
        return [cells for classes, cells in self.rows if cls in classes.split()]

    def hidden(self, element_id: str) -> bool:
        return "hidden" in self.by_id[element_id]

    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise AssertionError(f"{path} is not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.unit
class PageHtmlTests(SynchronousTestCase):
    """The document itself, served to anyone: no browser needed."""

    def test_org_is_escaped(self) -> None:
        page = status_page('<script>alert("x")</script>&co')
        self.assertNotIn("<script>alert", page)
        self.assertIn("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;co", page)

    def test_self_contained(self) -> None:
        page = status_page("acme")
        self.assertIn('<meta name="viewport"', page)
        self.assertIn("<noscript>", page)
        self.assertIn("prefers-color-scheme: dark", page)
        self.assertNotRegex(page, r"(src|href)=\"?(https?:)?//")
        self.assertNotRegex(page, r"@import|url\(")
        # The token lives in sessionStorage only.
        self.assertIn("sessionStorage", page)
        self.assertNotIn("localStorage", page)
        self.assertNotIn("document.cookie", page)

    def test_csp_allows_exactly_the_inline_blocks(self) -> None:
        page = status_page("acme")
        meta = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page)
        assert meta is not None
        csp = html.unescape(meta[1])
        blocks = {
            "script-src": re.search(r"<script>(.*?)</script>", page, re.S),
            "style-src": re.search(r"<style>(.*?)</style>", page, re.S),
        }
        for directive, block in blocks.items():
            assert block is not None
            digest = base64.b64encode(hashlib.sha256(block[1].encode()).digest()).decode()
            self.assertIn(f"{directive} 'sha256-{digest}'", csp)
        self.assertIn("default-src 'none'", csp)
        self.assertIn("connect-src 'self'", csp)
        self.assertIn("form-action 'none'", csp)


@pytest.mark.processes
class PackageDataTests(SynchronousTestCase):
    """The page's HTML, CSS and JS are files of the package, found wherever it is installed."""

    def test_the_page_is_made_of_the_package_files(self) -> None:
        static = files("dfs_twisted") / "static"
        page = status_page("acme")
        for name, tag in (("page.js", "script"), ("page.css", "style")):
            source = (static / name).read_text("utf-8")
            block = re.search(rf"<{tag}>(.*?)</{tag}>", page, re.S)
            assert block is not None
            self.assertEqual(block[1], source, name)
        template = (static / "page.html").read_text("utf-8")
        self.assertIn('<h1 id="org">${org}</h1>', template)
        self.assertIn('<h1 id="org">acme</h1>', page)

    def test_a_built_wheel_carries_the_page(self) -> None:
        """Build the wheel (not the editable install the tests run from) and use it."""
        root = Path(__file__).resolve().parent.parent
        work = Path(tempfile.mkdtemp(prefix="dfs-wheel-"))
        self.addCleanup(shutil.rmtree, work, True)
        source = work / "source"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(root / name, source / name)
        for tree in ("dfs_twisted", "twisted"):
            shutil.copytree(
                root / tree, source / tree, ignore=shutil.ignore_patterns("__pycache__")
            )
        built = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--quiet",
                "-w",
                str(work / "dist"),
                str(source),
            ],
            capture_output=True,
            timeout=300,
        )
        self.assertEqual(built.returncode, 0, built.stderr.decode(errors="replace")[-2000:])
        [wheel] = (work / "dist").glob("dfs_twisted-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            archive.extractall(work / "installed")
        for name in ("page.html", "page.css", "page.js"):
            self.assertIn(f"dfs_twisted/static/{name}", names)
        # Only the unpacked wheel on the path (-S: no site-packages, no editable install).
        script = (
            "import dfs_twisted.page as p; print(p.__file__); "
            "print(len(p.status_page('from-the-wheel')))"
        )
        ran = subprocess.run(
            [sys.executable, "-S", "-c", script],
            capture_output=True,
            timeout=60,
            cwd=work,
            env={**os.environ, "PYTHONPATH": str(work / "installed")},
        )
        self.assertEqual(ran.returncode, 0, ran.stderr.decode(errors="replace")[-2000:])
        where, length = ran.stdout.decode().split()
        self.assertTrue(where.startswith(str(work / "installed")), where)
        self.assertEqual(int(length), len(status_page("from-the-wheel")))


class PageNetwork(SeedNetwork):
    """The seed's three nodes; A holds FILE_NAME."""

    def __init__(self) -> None:
        super().__init__("dfs-page-")
        try:
            self.url = (self.a.data_dir / "api.url").read_text().strip()
            self.token = (self.a.data_dir / "private" / "api_token").read_text().strip()
            self.a.dfs("put", "-", "--name", FILE_NAME, input=b"shown on the page\n" * 100)
        except BaseException:
            self.stop()
            raise


def served_html(test: SynchronousTestCase, url: str) -> str:
    """``GET /`` as anyone gets it: no token."""
    with urllib.request.urlopen(url, timeout=10) as response:
        test.assertEqual(response.status, 200)
        body: str = response.read().decode()
    return body


@pytest.mark.processes
class ServedPageTests(SharedFixture, SynchronousTestCase):
    """What the node serves at ``/``, read as HTML: no browser needed, so never skipped."""

    @classmethod
    def make_shared(cls) -> PageNetwork:
        return PageNetwork()

    def setUp(self) -> None:
        self.net: PageNetwork = self.shared()
        self.addCleanup(self._shared_done)

    def served_html(self) -> str:
        return served_html(self, self.net.url)

    def test_javascript_off(self) -> None:
        """Without the script, the served HTML is all there is: org, explanation, note."""
        body = self.served_html()
        for secret in (FILE_NAME, html.escape(FILE_NAME), self.net.token):
            self.assertNotIn(secret, body)
        dom = Dom(body)
        self.assertTrue(dom.hidden("login"), "a login form that cannot work without JS")
        self.assertTrue(dom.hidden("dash"))
        self.assertEqual(dom.rows_of("peer") + dom.rows_of("file"), [])
        text = dom.all_text()
        self.assertIn(f"node-{self.net.a.port}", text)
        self.assertIn("JavaScript is off", text)
        self.assertIn("API token", text)
        self.assertIn("<noscript>", body)


@pytest.mark.browser
class StatusPageBrowserTests(SharedFixture, SynchronousTestCase):
    """The page in headless Chromium against the real network."""

    @classmethod
    def make_shared(cls) -> PageNetwork:
        return PageNetwork()

    @classmethod
    def setUpClass(cls) -> None:
        if chromium_binary() is not None:
            cls.shared()

    def setUp(self) -> None:
        binary = chromium_binary()
        if binary is None:
            cannot_run("no chromium or chromium-browser on PATH (.ci/run installs it)")
        self.browser = binary
        self.net: PageNetwork = self.shared()
        self.addCleanup(self._shared_done)

    def tempdir(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="dfs-chromium-"))
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def chromium(self, url: str, *flags: str) -> str:
        """Run headless Chromium on ``url`` with a new profile; return its stdout."""
        profile = self.tempdir()
        argv = [
            self.browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            *flags,
            url,
        ]
        # Its own session, so that the browser and its helpers can be stopped as a group.
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "HOME": str(profile)},
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise AssertionError(f"chromium did not finish in {CHROMIUM_TIMEOUT}s") from None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.assertEqual(
            proc.returncode, 0, f"chromium failed: {err.decode(errors='replace')[-2000:]}"
        )
        return out.decode("utf-8", errors="replace")

    def page(self, fragment: str = "", *flags: str) -> Dom:
        return Dom(self.chromium(self.net.url + fragment, *flags, "--dump-dom"))

    def with_token(self) -> str:
        return "#token=" + quote(self.net.token, safe="")

    def test_with_token_shows_peers_and_files(self) -> None:
        net = self.net
        dom = self.page(self.with_token())
        self.assertFalse(dom.hidden("dash"), "the dashboard is hidden")
        self.assertTrue(dom.hidden("login"), "the login form is shown despite the token")
        peers = dom.rows_of("peer")
        self.assertEqual(len(peers), 2, peers)
        for peer in (net.b, net.c):
            row = next((cells for cells in peers if cells[0] == f"node-{peer.port}"), None)
            self.assertIsNotNone(row, f"node-{peer.port} missing from {peers}")
            assert row is not None
            self.assertIn("connected", row)
            self.assertIn(f"127.0.0.1:{peer.port}", row)
        files = dom.rows_of("file")
        self.assertIn(FILE_NAME, [cells[0] for cells in files])
        text = dom.all_text()
        self.assertIn(f"node-{net.a.port}", text)
        self.assertIn("Peers compared on connect and every 1 min", text)
        self.assertIn("Relay for other orgs on", text)
        self.assertIn("Last scrub", text)
        self.assertIn("2 of 2", text)
        self.assertNotIn(net.token, text)

    def test_without_token_shows_only_the_form(self) -> None:
        dom = self.page()
        self.assertFalse(dom.hidden("login"))
        self.assertTrue(dom.hidden("dash"))
        self.assertEqual(dom.rows_of("peer"), [])
        self.assertEqual(dom.rows_of("file"), [])
        text = dom.all_text()
        self.assertIn(f"node-{self.net.a.port}", text)
        self.assertNotIn(FILE_NAME, text)

    def test_wrong_token_shows_the_form_again(self) -> None:
        dom = self.page("#token=not-the-token")
        self.assertFalse(dom.hidden("login"))
        self.assertTrue(dom.hidden("dash"))
        self.assertIn("rejected", dom.all_text())
        self.assertNotIn(FILE_NAME, dom.all_text())

    def served_html(self) -> str:
        return served_html(self, self.net.url)

    def test_screenshots(self) -> None:
        shots = Path(self.mktemp()).absolute()
        shots.mkdir(parents=True)
        for name, width, height in (("status.png", 1280, 900), ("status-phone.png", 390, 844)):
            path = shots / name
            self.chromium(
                self.net.url + self.with_token(),
                f"--screenshot={path}",
                f"--window-size={width},{height}",
                "--hide-scrollbars",
            )
            self.assertTrue(path.exists(), f"no screenshot at {path}")
            self.assertGreater(path.stat().st_size, 0)
            self.assertEqual(png_size(path), (width, height))
        # And what a browser without JavaScript shows. (Headless Chromium cannot turn
        # scripting off and still take a screenshot: a copy of the served HTML without its
        # script, <noscript> shown as a <div>, stands in.)
        static = shots / "static.html"
        body = re.sub(r"<script>.*?</script>", "", self.served_html(), flags=re.S)
        static.write_text(re.sub(r"<(/?)noscript>", r"<\1div>", body))
        path = shots / "status-nojs.png"
        self.chromium(static.as_uri(), f"--screenshot={path}", "--window-size=390,844")
        self.assertEqual(png_size(path), (390, 844))

    def test_under_replicated_file_is_flagged(self) -> None:
        net = self.net
        # C loses its replica while connected: two copies where there should be three.
        owner = net.a.status()["node_id"]

        def held() -> set[Path]:
            return {p for p in (net.c.data_dir / "store" / owner).rglob("*") if p.is_file()}

        before = held()
        net.a.dfs("put", "-", "--name", LATE_NAME, input=b"late\n" * 100)
        [replica] = held() - before
        replica.unlink()
        # The page shows the copies A knows of (it asks no peer every 2 s): A learns
        # of the loss when it next lists C (a sync, an audit, or `dfs ls`, here).
        net.a.dfs("ls")
        dom = self.page(self.with_token())
        rows = {cells[0]: cells for cells in dom.rows_of("file")}
        self.assertIn(LATE_NAME, rows)
        self.assertIn("under-replicated", rows[LATE_NAME])
        self.assertIn("2 / 3", rows[LATE_NAME])
        under = [classes for classes, cells in dom.rows if cells and cells[0] == LATE_NAME]
        self.assertIn("under", under[0].split())
        self.assertNotIn("under-replicated", rows[FILE_NAME])
        health = dom.all_text()
        self.assertRegex(health, r"Replication health 1 of 2 files under-replicated")


# ------------------------------------------------------------ clicking the page


def text_of(element_id: str) -> str:
    """A JavaScript expression: the text of an element, "" while it is hidden or absent."""
    return (
        f"(() => {{ const e = document.getElementById({json.dumps(element_id)});"
        " return e && !e.hidden ? e.textContent : ''; })()"
    )


def peer_row(org: str) -> str:
    """A JavaScript expression: the cells' text of the peer row of ``org`` (or null)."""
    return (
        "(() => { for (const tr of document.querySelectorAll('tr.peer')) {"
        " const cells = [...tr.cells].map((c) => c.textContent);"
        f" if (cells[0] === {json.dumps(org)}) return cells; }} return null; }})()"
    )


class PageSession:
    """A browser on one node's status page, token handed over in the fragment."""

    def __init__(self, test: SynchronousTestCase, node: NodeProcess, **size: int) -> None:
        binary = chromium_binary()
        if binary is None:
            cannot_run("no chromium or chromium-browser on PATH (.ci/run installs it)")
        self.url = (node.data_dir / "api.url").read_text().strip()
        self.token = (node.data_dir / "private" / "api_token").read_text().strip()
        self.browser = Browser(binary, **size)
        test.addCleanup(self.browser.close)

    def open(self) -> Browser:
        self.browser.open(self.url + "#token=" + quote(self.token, safe=""))
        self.wait_polls(1)
        return self.browser

    def polls(self) -> int:
        return int(self.browser.eval("Number(document.body.dataset.polls || 0)"))

    def wait_polls(self, count: int) -> None:
        self.browser.wait_for(
            f"Number(document.body.dataset.polls || 0) >= {count}", f"{count} renders"
        )


@pytest.mark.browser
class StatusPageActionTests(SharedFixture, SynchronousTestCase):
    """The page's buttons and live figures, clicked and read in Chromium.

    The browser is driven over the DevTools protocol (`tests/browser.py`): clicks
    are mouse events at the button, what the page shows is read from its DOM.
    """

    @classmethod
    def make_shared(cls) -> PageNetwork:
        return PageNetwork()

    @classmethod
    def setUpClass(cls) -> None:
        if chromium_binary() is not None:
            cls.shared()

    def setUp(self) -> None:
        if chromium_binary() is None:
            cannot_run("no chromium or chromium-browser on PATH (.ci/run installs it)")
        self.net: PageNetwork = self.shared()
        self.addCleanup(self._shared_done)

    def test_copy_button_copies_the_full_node_id(self) -> None:
        session = PageSession(self, self.net.a)
        session.browser.grant_clipboard(session.url.rstrip("/"))
        page = session.open()
        node_id = self.net.a.status()["node_id"]
        # The page shows a short id; the button copies all 64 characters.
        self.assertNotIn(node_id, page.eval("document.getElementById('node').textContent"))
        page.click("copy-id")
        page.wait_for(text_of("copy-id") + " === 'Copied'", "the button to say Copied")
        self.assertEqual(page.eval("navigator.clipboard.readText()"), node_id)

    def test_scrub_now_runs_a_pass(self) -> None:
        node = self.net.a

        def finished() -> float:
            last = node.status()["scrub"]["last"]
            return float(last["finished"]) if last else 0.0

        wait_until(lambda: finished() > 0, "the start-up scrub")
        before = finished()
        session = PageSession(self, node)
        page = session.open()
        page.click("scrub-now")
        page.wait_for(text_of("action-result") + " === 'Scrub started.'", "the answer")
        wait_until(lambda: finished() > before, "a second scrub pass")
        # Two renders later, the page asked after the pass ended: it shows that pass.
        session.wait_polls(session.polls() + 2)
        shown = page.eval(text_of("scrub-line"))
        self.assertRegex(shown, r"^Last scrub: .+ \u00b7 \d+ checked \u00b7 0 damaged")

    def other_origin(self) -> str:
        """An empty page served from another port: another origin, as another site is."""

        class Empty(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"<!doctype html><title>another site</title>"
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Empty)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    def test_another_origin_cannot_post_even_with_the_token(self) -> None:
        """What makes the buttons CSRF-proof, shown with the worst case: a page of
        another origin that even knows the token cannot get its POST through."""
        node = self.net.a
        before = node.status()["scrub"]
        session = PageSession(self, node)
        page = session.browser
        page.open(self.other_origin())
        page.wait_for("document.readyState === 'complete' && location.port", "the other page")
        outcome = page.eval(
            f"fetch({json.dumps(session.url + 'v1/scrub')}, {{method: 'POST',"
            f" headers: {{Authorization: {json.dumps('Bearer ' + session.token)}}}}})"
            ".then((r) => 'answered ' + r.status, (e) => 'refused: ' + e.name)"
        )
        self.assertEqual(outcome, "refused: TypeError")
        # A form-style POST does get through, without the header: it is refused.
        outcome = page.eval(
            f"fetch({json.dumps(session.url + 'v1/scrub')}, {{method: 'POST', mode: 'no-cors'}})"
            ".then((r) => 'sent', (e) => 'refused: ' + e.name)"
        )
        self.assertEqual(outcome, "sent")
        after = node.status()["scrub"]
        self.assertEqual((after["running"], after["last"]), (before["running"], before["last"]))

    def test_recover_brings_back_a_lost_copy(self) -> None:
        node = self.net.a
        name = "recovered by a click.txt"
        node.dfs("put", "-", "--name", name, input=b"come back\n" * 50)
        token = (node.data_dir / "private" / "api_token").read_text().strip()
        url = (node.data_dir / "api.url").read_text().strip()
        request = urllib.request.Request(
            url + "v1/files", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            [blob] = [f["blob"] for f in json.load(response) if f["name"] == name]
        owner = node.status()["node_id"]
        [local] = list((node.data_dir / "store" / owner).rglob(blob))
        local.unlink()
        page = PageSession(self, node).open()
        page.click("recover")
        result = page.wait_for(
            text_of("action-result") + ".startsWith('Recovered') && " + text_of("action-result"),
            "the recover answer",
        )
        self.assertRegex(result, r"^Recovered [1-9]\d* files? from peers")
        self.assertTrue(local.exists(), "the lost copy is not back")
        self.assertEqual(node.dfs("get", name).stdout, b"come back\n" * 50)

    def test_what_we_hold_for_a_peer_and_its_transfer_rate(self) -> None:
        net = self.net
        session = PageSession(self, net.a)
        page = session.open()
        # C sends A a replica while the page watches: C's row shows a rate, then what
        # A holds for C, with a quota bar that shows it.
        org_c = f"node-{net.c.port}"
        net.c.dfs("put", "-", "--name", "for the rates.bin", input=os.urandom(3 << 20))
        rate = page.wait_for(
            f"(() => {{ const cells = {peer_row(org_c)};"
            " const r = cells && cells[6].match(/[\\d.]+ (KiB|MiB|GiB)\\/s/);"
            " return r && r[0]; })()",
            "a transfer rate into A from C",
        )
        self.assertRegex(rate, r"(KiB|MiB|GiB)/s")
        row = page.wait_for(
            f"(() => {{ const cells = {peer_row(org_c)};"
            " return cells && /MiB/.test(cells[8]) && cells; })()",
            "what A holds for C",
        )
        held = net.a.status()["storage"]["held_for_others"][net.c.status()["node_id"]]
        self.assertGreater(held, 3 << 20)
        self.assertIn("MiB", row[8])
        bar = page.eval(
            "(() => { for (const tr of document.querySelectorAll('tr.peer')) {"
            f" if (tr.cells[0].textContent !== {json.dumps(org_c)}) continue;"
            " const bar = tr.cells[8].querySelector('.bar');"
            " const fill = bar.firstElementChild.getBoundingClientRect();"
            " const track = bar.getBoundingClientRect();"
            " return [track.width, track.height, fill.width]; } })()"
        )
        track_width, track_height, fill_width = bar
        self.assertGreaterEqual(track_width, 60)
        self.assertGreaterEqual(track_height, 6)
        self.assertGreaterEqual(fill_width, 3, "a held amount with no visible fill")

    def test_durations_and_the_scrub_line(self) -> None:
        for width, height in ((1280, 900), (390, 844)):
            page = PageSession(self, self.net.a, width=width, height=height).open()
            text = page.eval("document.getElementById('health').textContent")
            self.assertIn("Peers comparedon connect and every 1 min", text)
            self.assertNotIn("1 min 0 s", text)
            # One line: every piece of its text sits at the same height.
            tops = page.eval(
                "(() => { const r = document.createRange();"
                " r.selectNodeContents(document.getElementById('scrub-line'));"
                " return [...r.getClientRects()].map((c) => Math.round(c.top)); })()"
            )
            self.assertTrue(tops, "no scrub line")
            self.assertEqual(len(set(tops)), 1, f"the scrub line wraps at {width}px: {tops}")


@pytest.mark.browser
class AwayPeerPageTests(SynchronousTestCase):
    """A peer that went away: its row says when it was last seen."""

    def test_last_seen_of_a_peer_that_is_away(self) -> None:
        if chromium_binary() is None:
            cannot_run("no chromium or chromium-browser on PATH (.ci/run installs it)")
        root = Path(tempfile.mkdtemp(prefix="dfs-away-"))
        self.addCleanup(shutil.rmtree, root, True)
        a_port, b_port = free_port(), free_port()
        a, b = start_network(root, [(a_port, [b_port]), (b_port, [])])
        self.addCleanup(a.stop)
        self.addCleanup(b.stop)
        session = PageSession(self, a)
        seen = time.time() - 90
        added: list[str] = []

        def last_seen(_url: str, status: Any) -> Any:
            # peers.py reports `last_seen` for a peer that is away; where a row lacks
            # it, it is filled in as that code does, to show how the page renders it.
            for row in status["peers"]:
                if row["state"] != "connected" and "last_seen" not in row:
                    row["last_seen"] = seen
                    added.append(row["address"])
            return status

        session.browser.intercept("*v1/status*", last_seen)
        page = session.open()
        b.stop()
        cells = page.wait_for(
            "(() => { const c = [...document.querySelectorAll('tr.peer')]"
            ".map((tr) => [...tr.cells].map((td) => td.textContent))"
            f".find((c) => c[2] === '127.0.0.1:{b_port}');"
            " return c && /last seen/.test(c[3]) && c; })()",
            "B's row to say when it was last seen",
        )
        self.assertNotIn("connected", cells[3].replace("last seen", ""))
        if added:
            self.assertRegex(cells[3], r"last seen 1 min 3\d s ago")
        else:
            self.assertRegex(cells[3], r"last seen (just now|\d+ s ago)")
