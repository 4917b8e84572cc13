"""The dashboard page's files: one HTML page, its script and styles, and uPlot (vendored).

Everything is shipped in the package (``static/``) and served by the metrics blueprint,
so the page works offline and loads nothing from elsewhere. The Content-Security-Policy
allows only these files and requests to the same origin: no inline script or style, no
other hosts. The page itself fills its tables with ``textContent`` only, since label
values are chosen by clients.
"""

from __future__ import annotations

from importlib import resources

from flask import Response

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE = "dashboard.html"
ASSETS: dict[str, str] = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}
"""Files the page loads, with their content types (any other name is a 404)."""


class DashboardFiles:
    """The page and its assets, read from the package once (about 60 KB in all)."""

    def __init__(self) -> None:
        folder = resources.files(__package__).joinpath("static")
        self._files = {name: folder.joinpath(name).read_bytes() for name in (PAGE, *ASSETS)}

    def page(self) -> Response:
        """The dashboard's HTML page (revalidated on every load: ``no-cache``)."""
        return self._response(self._files[PAGE], "text/html; charset=utf-8", "no-cache")

    def asset(self, name: str) -> Response | None:
        """The asset called ``name``, or None when there is no such asset."""
        content_type = ASSETS.get(name)
        if content_type is None:
            return None
        return self._response(self._files[name], content_type, "max-age=3600")

    @staticmethod
    def _response(body: bytes, content_type: str, cache: str) -> Response:
        response = Response(body, content_type=content_type)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = cache
        return response
