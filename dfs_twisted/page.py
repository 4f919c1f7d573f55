"""The operator's status page served at ``GET /``: one self-contained HTML document.

Its HTML, CSS and JavaScript are package data (``dfs_twisted/static/``), put together
once at import: no build step and no external asset. A Content-Security-Policy (in a
meta tag) lets only that style and that script run, by their SHA-256 computed here
from the very text inserted, and lets the script talk to this node only.

The page is served to anyone, so the HTML itself holds nothing but the org name (HTML
escaped). Everything else comes from the bearer-token API, which the script polls
every `POLL_SECONDS` once it has the token.

The token: typed into a password field and kept in ``sessionStorage`` (this tab only;
never in the URL, localStorage or a cookie). "Forget token" drops it. A script or a
test may hand it over once in the URL *fragment*, ``/#token=...``, which the browser
never sends to the server: the page moves it into sessionStorage and removes it from
the address bar and the history entry at once (``history.replaceState``).
"""

from __future__ import annotations

import base64
import hashlib
import html
from importlib.resources import files
from string import Template

POLL_SECONDS = 2


def _static(name: str) -> str:
    return (files("dfs_twisted") / "static" / name).read_text("utf-8")


def _sha256(source: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()


CSS = _static("page.css")
JS = _static("page.js")
CSP = "; ".join(
    [
        "default-src 'none'",
        f"script-src '{_sha256(JS)}'",
        f"style-src '{_sha256(CSS)}'",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
    ]
)
_TEMPLATE = Template(_static("page.html"))


def status_page(org: str) -> str:
    """The whole status page for the node of ``org``; safe to serve without a token."""
    return _TEMPLATE.substitute(
        org=html.escape(org), csp=html.escape(CSP), css=CSS, js=JS, poll=POLL_SECONDS
    )
