"""auth on its own: which Authorization headers the scrape and reset credentials accept, and
how secrets are read from settings and files."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from flask_gatewayz_metrics.auth import Credentials, reset_credentials, scrape_credentials, secret
from flask_gatewayz_metrics.settings import Settings


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_nothing_configured_is_open() -> None:
    """Without credentials every header, and none, is allowed and no challenge is sent."""
    open_ = Credentials()
    assert not open_.required
    assert open_.allow(None) and open_.allow("Bearer anything") and open_.allow("garbage")
    assert open_.challenge == ""


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("Bearer s3cret", True),
        ("bearer   s3cret  ", True),  # scheme case-insensitive, spaces around the value
        ("Bearer s3cret2", False),
        ("Bearer ", False),
        ("s3cret", False),
        (None, False),
        (basic("s3cret", ""), False),  # the token is not a basic password
    ],
)
def test_bearer_token(header: str | None, allowed: bool) -> None:
    """A token credential accepts exactly 'Bearer <token>'."""
    assert Credentials(token=b"s3cret").allow(header) is allowed


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (basic("prom", "pa:ss"), True),
        (basic("prom", "wrong"), False),
        ("Basic !!!not-base64!!!", False),
        ("Basic " + base64.b64encode(b"prom:pa:ss").decode() + "=", False),  # invalid padding
        ("Bearer prom:pa:ss", False),
    ],
)
def test_basic_credentials(header: str, allowed: bool) -> None:
    """Basic credentials compare the decoded user:password; malformed base64 is refused, never raised."""
    assert Credentials(basic=b"prom:pa:ss").allow(header) is allowed


def test_challenge_names_each_configured_scheme() -> None:
    """WWW-Authenticate lists Bearer and/or Basic, as configured."""
    assert Credentials(token=b"t").challenge == 'Bearer realm="gatewayz-metrics"'
    both = Credentials(token=b"t", basic=b"u:p").challenge
    assert both == 'Bearer realm="gatewayz-metrics", Basic realm="gatewayz-metrics", charset="UTF-8"'


def test_scrape_credentials_from_settings() -> None:
    """Token and username/password settings become the scrape credentials; reset has its own token only."""
    settings = Settings(auth_token="tok", auth_username="prom", auth_password="pw", reset_token="rst")
    scrape = scrape_credentials(settings)
    assert scrape.allow("Bearer tok") and scrape.allow(basic("prom", "pw"))
    assert not scrape.allow("Bearer rst")
    reset = reset_credentials(settings)
    assert reset.allow("Bearer rst")
    assert not reset.allow("Bearer tok") and not reset.allow(basic("prom", "pw"))


def test_username_without_password_is_refused() -> None:
    """A username without a password (or the reverse) is a configuration error naming both keys."""
    with pytest.raises(ValueError, match="AUTH_USERNAME and GATEWAYZ_METRICS_AUTH_PASSWORD"):
        scrape_credentials(Settings(auth_username="prom"))
    with pytest.raises(ValueError, match="set together"):
        scrape_credentials(Settings(auth_password="pw"))


def test_secret_from_a_file(tmp_path: Path) -> None:
    """A secret file is read once, one trailing newline stripped; an empty string value is
    an error (like an empty file), never "none"."""
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert secret(None, str(path), "auth_token") == "from-file"
    assert secret("direct", None, "auth_token") == "direct"
    with pytest.raises(ValueError, match="is empty"):
        secret("", None, "auth_token")
    assert secret(None, None, "auth_token") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read GATEWAYZ_METRICS_AUTH_TOKEN_FILE"), ("\n", "is empty")],
    ids=["missing", "empty"],
)
def test_unusable_secret_file_is_an_error(tmp_path: Path, content: str | None, message: str) -> None:
    """A missing or empty secret file raises a ValueError naming the key."""
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message):
        secret(None, str(path), "auth_token")


def test_secret_and_its_file_together_are_an_error(tmp_path: Path) -> None:
    """Giving a secret and its _FILE variant is ambiguous and refused."""
    with pytest.raises(ValueError, match="not both"):
        secret("direct", str(tmp_path / "token"), "reset_token")


def test_an_empty_secret_or_a_shared_reset_token_is_refused_at_start() -> None:
    """An empty token or password (``GATEWAYZ_METRICS_AUTH_TOKEN=`` in a compose file) is
    an error, not "no auth" (it left every route open); a reset token equal to the scrape
    token or password is an error too (every scraper could reset)."""
    with pytest.raises(ValueError, match="is empty"):
        scrape_credentials(Settings(auth_token=""))
    with pytest.raises(ValueError, match="is empty"):
        reset_credentials(Settings(reset_token=""))
    for shared in (Settings(auth_token="same", reset_token="same"),
                   Settings(auth_username="u", auth_password="same", reset_token="same")):  # fmt: skip
        with pytest.raises(ValueError, match="must differ"):
            reset_credentials(shared)
    assert reset_credentials(Settings(auth_token="scrape", reset_token="reset")).token == b"reset"


def test_a_secret_of_non_utf8_environment_bytes_is_those_bytes() -> None:
    """A token from an environment variable holding bytes that are not UTF-8 arrives as
    lone surrogates (``surrogateescape``): it is those original bytes, which a client
    sends; any other lone surrogate is an error naming the setting (both were a bare
    ``UnicodeEncodeError`` at start)."""
    raw = b"tok\xe9n"  # Latin-1 "tokén" in the environment
    credentials = scrape_credentials(Settings(auth_token=raw.decode("utf-8", "surrogateescape")))
    assert credentials.token == raw
    assert credentials.allow("Bearer " + raw.decode("latin-1"))
    with pytest.raises(ValueError, match="GATEWAYZ_METRICS_AUTH_TOKEN is not valid text"):
        scrape_credentials(Settings(auth_token="tok\ud800n"))
    with pytest.raises(ValueError, match="GATEWAYZ_METRICS_RESET_TOKEN is not valid text"):
        reset_credentials(Settings(reset_token="\ud800"))
    with pytest.raises(ValueError, match="AUTH_USERNAME / AUTH_PASSWORD is not valid text"):
        scrape_credentials(Settings(auth_username="u", auth_password="\ud800"))


def wire(header: str) -> str:
    """``header`` as a WSGI server hands it over when the client sends it UTF-8 encoded:
    the bytes decoded as Latin-1 (PEP 3333)."""
    return header.encode("utf-8").decode("latin-1")


@pytest.mark.parametrize("token", ["pässwörd", "voilà", "ключ-🔑", "s3cret"])
def test_non_ascii_bearer_token_matches_the_utf8_a_client_sends(token: str) -> None:
    """A non-ASCII token matches the UTF-8 bytes a client sends (it never could: the
    Latin-1 header value was encoded to UTF-8 again). "voilà" ends in the byte 0xA0, which
    str.strip would take for white space. The same text's Latin-1 bytes match too, when
    it has some (Python's http.client and requests send header text as Latin-1; a review
    found such a client refused by the first fix)."""
    credentials = scrape_credentials(Settings(auth_token=token))
    assert credentials.allow(wire(f"Bearer {token}"))
    assert credentials.allow(wire(f"bearer  {token} \t"))
    assert not credentials.allow(wire(f"Bearer {token}x"))
    latin1 = f"Bearer {token}"  # the header as WSGI gives it when the client sent Latin-1
    assert credentials.allow(latin1) is all(ord(c) < 256 for c in token)
    assert not credentials.allow(latin1 + "x")


def test_non_ascii_basic_password_matches() -> None:
    """Basic credentials are base64 of the UTF-8 user:password on the wire, or of its
    Latin-1 bytes (what requests sends for str credentials)."""
    credentials = scrape_credentials(Settings(auth_username="prøm", auth_password="pässwörd"))
    assert credentials.allow(wire(basic("prøm", "pässwörd")))
    assert not credentials.allow(wire(basic("prøm", "passwörd")))
    latin1 = "Basic " + base64.b64encode("prøm:pässwörd".encode("latin-1")).decode()
    assert credentials.allow(latin1)
    assert not credentials.allow("Basic " + base64.b64encode("prøm:passwörd".encode("latin-1")).decode())


@pytest.mark.parametrize(
    "header",
    ["Bearer p\u00e4ssw\u00f6rdx", "Bearer \u20ac", "Basic \u0100", "Bearer \ud800", "\U0001f511",
     "Basic cHJvbTpw\xff"],
)
def test_a_header_no_wsgi_server_makes_never_raises(header: str) -> None:
    """Characters above U+00FF (or a lone surrogate) cannot come from a WSGI server; such a
    value, like any other, is a mismatch, never an exception."""
    credentials = Credentials(token="pässwörd".encode(), basic="prom:pässwörd".encode())
    assert credentials.allow(header) is False


def test_non_ascii_token_through_a_real_server(tmp_path: Path) -> None:
    """End to end on werkzeug's server and a raw socket: the UTF-8 bytes of the token get 200."""
    import socket
    import threading

    from conftest import configured_app
    from werkzeug.serving import make_server

    app, _ = configured_app(tmp_path, "utf8_token", auth_token="pässwörd")
    server = make_server("127.0.0.1", 0, app, threaded=False)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        statuses = []
        for token in ("pässwörd".encode(), "pässwörd".encode("latin-1"), b"wrong", "pässwört".encode()):
            with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer " + token + b"\r\n\r\n")
                statuses.append(s.makefile("rb").readline().split()[1])
        assert statuses == [b"200", b"200", b"401", b"401"]
    finally:
        server.shutdown()
        thread.join(timeout=10)
