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
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path
from urllib.parse import quote

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from dfs_twisted.page import status_page

from .shared import SeedNetwork, SharedFixture

FILE_NAME = "status page <check> & co.txt"
LATE_NAME = "lost by a peer.bin"
CHROMIUM_TIMEOUT = 120


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


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
            raise SkipTest("no chromium or chromium-browser on PATH (.ci/run installs it)")
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
        """``GET /`` as anyone gets it: no token."""
        with urllib.request.urlopen(self.net.url, timeout=10) as response:
            self.assertEqual(response.status, 200)
            body: str = response.read().decode()
        return body

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
