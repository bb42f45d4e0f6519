"""The dashboard's HTML (``templates/``): the page (sections and headings; the script fills them) and the login form.

The page carries the session's CSRF token in a ``<meta>`` element, which only a script of
this origin can read; nothing else on it is secret, and nothing secret is ever put on it.
Every HTML answer has ``SECURITY_HEADERS``: a strict Content-Security-Policy (scripts,
styles and requests to this origin only, no inline code, no framing, forms posted here
only), no caching, no referrer. The script and style sheet are package files, served with a
hash of their content in their URL so that a browser can keep them for good.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from html import escape
from importlib.resources import files
from string import Template

from aiohttp import web

__all__ = ["SECURITY_HEADERS", "STATIC", "StaticFile", "login_page", "page"]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class StaticFile:
    """A file of ``service/dashboard/static``, read once, and the URL that names its content."""

    name: str
    content_type: str
    body: bytes
    url: str


def _static(name: str, content_type: str) -> StaticFile:
    body = files("service.dashboard").joinpath("static", name).read_bytes()
    return StaticFile(name, content_type, body, f"/dashboard/static/{name}?v={hashlib.sha256(body).hexdigest()[:12]}")


STATIC = {
    file.name: file
    for file in (
        _static("dashboard.js", "text/javascript"),
        _static("dashboard.css", "text/css"),
    )
}


def _template(name: str) -> Template:
    return Template(files("service.dashboard").joinpath("templates", name).read_text(encoding="utf-8"))


# Every HTML answer is ``document.html`` around a body: ``page.html`` or ``login.html``.
_DOCUMENT = _template("document.html")
_PAGE = _template("page.html")
_PAGE_HEAD = Template('<meta name="csrf-token" content="${csrf_token}">\n<script src="${js}" defer></script>\n')
_LOGIN = _template("login.html")
_LOGIN_FORM = files("service.dashboard").joinpath("templates", "login_form.html").read_text(encoding="utf-8")
_NO_TOKEN = (
    '<p class="problem">INTERNAL_TOKEN is not set, so the dashboard is open only from loopback '
    "(this machine, or an SSH tunnel to it).</p>"
)
_WRONG_TOKEN = '<p class="problem" role="alert">That is not the internal token.</p>'


def _html(title: str, body: str, head: str = "") -> web.Response:
    """``body`` in the document shared by every page, titled ``title``; ``head``: more of its ``<head>``."""
    css = STATIC["dashboard.css"].url
    document = _DOCUMENT.substitute(title=escape(title), css=css, head=head, body=body)
    return web.Response(text=document, content_type="text/html", headers=SECURITY_HEADERS)


def page(service: str, csrf_token: str) -> web.Response:
    """The dashboard for a session whose CSRF token is ``csrf_token``."""
    head = _PAGE_HEAD.substitute(csrf_token=escape(csrf_token), js=STATIC["dashboard.js"].url)
    return _html(f"{service} operations", _PAGE.substitute(service=escape(service)), head)


def login_page(service: str, *, token_configured: bool, failed: bool = False) -> web.Response:
    """The login form; without ``INTERNAL_TOKEN`` it says why there is none."""
    message = _NO_TOKEN if not token_configured else _WRONG_TOKEN if failed else ""
    form = _LOGIN_FORM if token_configured else ""
    body = _LOGIN.substitute(service=escape(service), message=message, form=form)
    return _html(f"{service} operations: sign in", body)
