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
