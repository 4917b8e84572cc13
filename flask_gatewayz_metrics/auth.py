"""Access control of the metrics routes: scrape credentials and the reset token.

Scrapes (``/metrics``, ``/metrics/json``, ``/metrics/health``) may require a bearer token
or HTTP basic credentials, the two schemes Prometheus scrape configs support; the reset
route always requires its own token and never accepts the scrape credentials. Secrets
come from settings, environment variables or files (``*_FILE``, read once at start) and
are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from .settings import Settings


@dataclass(frozen=True)
class Credentials:
    """What an ``Authorization`` header must carry; nothing configured = open."""

    token: bytes | None = None
    basic: bytes | None = None
    """``username:password`` as UTF-8 bytes."""

    @property
    def required(self) -> bool:
        """Whether any credential is configured (else the route is open)."""
        return self.token is not None or self.basic is not None

    def allow(self, header: str | None) -> bool:
        """Whether the ``Authorization`` header value matches (always True when open).

        ``header`` is the value as WSGI hands it over: the header's bytes decoded as
        Latin-1 (PEP 3333). It is compared as those bytes with the secret's UTF-8 bytes,
        so a non-ASCII token or password matches the UTF-8 a client sends (Prometheus,
        curl), and also with its Latin-1 bytes when it has some (Python's http.client
        and requests send header text and basic credentials as Latin-1). Never raises: a
        value that is not Latin-1 text (no WSGI server makes one) matches nothing.
        """
        if not self.required:
            return True
        try:
            # Back to the bytes on the wire: re-encoding as UTF-8 would encode a UTF-8
            # client's bytes twice, so a non-ASCII secret could never match.
            raw = (header or "").encode("latin-1")
        except UnicodeEncodeError:
            return False
        # bytes.strip and split: ASCII white space only. str.strip would also take
        # U+0085 / U+00A0, which are the Latin-1 view of UTF-8 continuation bytes
        # (the last byte of "à" is 0xA0).
        scheme, _, value = raw.strip().partition(b" ")
        scheme = scheme.lower()
        if scheme == b"bearer" and self.token is not None:
            return _matches(value.strip(), self.token)
        if scheme == b"basic" and self.basic is not None:
            try:
                offered = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            return _matches(offered, self.basic)
        return False

    @property
    def challenge(self) -> str:
        """``WWW-Authenticate`` value naming the schemes this route accepts."""
        schemes = []
        if self.token is not None:
            schemes.append('Bearer realm="gatewayz-metrics"')
        if self.basic is not None:
            schemes.append('Basic realm="gatewayz-metrics", charset="UTF-8"')
        return ", ".join(schemes)


def scrape_credentials(settings: Settings) -> Credentials:
    """What the scrape routes accept: the bearer token and / or basic username and password
    of ``settings`` (``ValueError`` when only one of username and password is set)."""
    token = secret(settings.auth_token, settings.auth_token_file, "auth_token")
    username = settings.auth_username
    password = secret(settings.auth_password, settings.auth_password_file, "auth_password")
    if (username is None) != (password is None):
        raise ValueError(
            "GATEWAYZ_METRICS_AUTH_USERNAME and GATEWAYZ_METRICS_AUTH_PASSWORD(_FILE) must be set together"
        )
    basic = _as_bytes(f"{username}:{password}", "AUTH_USERNAME / AUTH_PASSWORD") if username is not None else None
    return Credentials(_as_bytes(token, "AUTH_TOKEN") if token else None, basic)


def reset_credentials(settings: Settings) -> Credentials:
    """What ``/metrics/reset`` accepts: its own bearer token only, never the scrape
    credentials (``ValueError`` when it equals the scrape token or password: every
    scraper could then wipe the metrics)."""
    token = secret(settings.reset_token, settings.reset_token_file, "reset_token")
    if token is not None and token in (
        secret(settings.auth_token, settings.auth_token_file, "auth_token"),
        secret(settings.auth_password, settings.auth_password_file, "auth_password"),
    ):
        raise ValueError("GATEWAYZ_METRICS_RESET_TOKEN must differ from the scrape token and password")
    return Credentials(_as_bytes(token, "RESET_TOKEN") if token else None)


def _as_bytes(secret_text: str, name: str) -> bytes:
    """The bytes a client sends for ``secret_text``: its UTF-8, or, for text that came
    from the environment as bytes that are not UTF-8 (lone surrogates from Python's
    ``surrogateescape``), those original bytes. Any other lone surrogate is an error
    naming the setting (it was a bare ``UnicodeEncodeError`` at start)."""
    try:
        return secret_text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError(f"GATEWAYZ_METRICS_{name} is not valid text (a lone surrogate)") from None


def secret(value: str | None, path: str | None, name: str) -> str | None:
    """A secret given directly or as a file to read (one trailing newline stripped)."""
    if value is not None and path is not None:
        raise ValueError(f"set GATEWAYZ_METRICS_{name.upper()} or its _FILE variant, not both")
    if path is None:
        if value == "":  # an empty secret must not mean "no auth": fail at start, never open
            raise ValueError(f"GATEWAYZ_METRICS_{name.upper()} is empty: unset it, or set a value")
        return value
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read GATEWAYZ_METRICS_{name.upper()}_FILE {path!r}: {exc.strerror}") from exc
    content = content.removesuffix("\n").removesuffix("\r")
    if not content:
        raise ValueError(f"GATEWAYZ_METRICS_{name.upper()}_FILE {path!r} is empty")
    return content


def _matches(offered: bytes, secret: bytes) -> bool:
    """Whether ``offered`` is ``secret`` (UTF-8) or the same text's Latin-1 bytes, each
    compared in constant time (both comparisons always run)."""
    try:
        latin1 = secret.decode("utf-8").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError):  # not UTF-8 text, or past U+00FF
        latin1 = secret
    as_utf8 = hmac.compare_digest(offered, secret)
    as_latin1 = hmac.compare_digest(offered, latin1)
    return as_utf8 or as_latin1
