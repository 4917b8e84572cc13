"""Which route a request matched, for the ``endpoint`` label of requests Flask's own
dispatch did not resolve (a 405, a request a middleware answered): matched again the way
Flask binds it. Used by ``request_timing``; never raises.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.ctx import RequestContext
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.routing import MapAdapter, Rule


def allowed_rule(ctx: RequestContext) -> Rule | None:
    """For a 405 on a real route: that route, matched again with a method it allows."""
    exc = ctx.request.routing_exception
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods and ctx.url_adapter is not None:
        return _match(ctx.url_adapter, next(iter(exc.valid_methods)))
    return None


def rule_from_environ(app: Flask, environ: dict[str, Any]) -> Rule | None:
    """The rule Flask matches for ``environ``, bound as Flask binds it (server name,
    subdomain, host matching); a 405 gives the route it was refused on."""
    try:
        adapter = app.create_url_adapter(app.request_class(environ))
        if adapter is None:
            return None
        try:
            rule, _ = adapter.match(return_rule=True)
        except MethodNotAllowed as exc:
            return _match(adapter, next(iter(exc.valid_methods))) if exc.valid_methods else None
        return rule
    except Exception:  # no match, redirect, bad host: unmatched
        return None


def _match(adapter: MapAdapter, method: str) -> Rule | None:
    """The rule ``adapter`` matches for ``method``, or None."""
    try:
        rule, _ = adapter.match(method=method, return_rule=True)
    except Exception:
        return None
    return rule
