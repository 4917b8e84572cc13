"""Tenants: usage per team, API key and end user, and each team's remaining budget.

A request carries a tenant through ``label_request(team=..., api_key=..., user=...)`` or,
with the ``GATEWAYZ_METRICS_TENANT_HEADERS`` setting, request headers. Its requests,
errors, tokens and cost are then also counted in the ``gatewayz_tenant_*`` families
(their own families: the spec's stay exactly as they are). Each of the three labels is
bounded like every other label: ``label_limits`` (defaults in ``labels.DEFAULT_LIMITS``)
and allowlists (``allowed_teams``), values past them recorded as ``other``.

An API key is never stored or exported raw: it becomes ``key-`` and the first 16 hex
digits of HMAC-SHA256(hash key, API key), or a caller's alias (``api_key_alias``). The
hash key is ``GATEWAYZ_METRICS_TENANT_HASH_KEY`` (setting or environment variable), else
a random key kept in the metrics directory (``tenant.key``, mode 0600), which every
process of a server shares; it changes (and so do the hashes) only when that directory
is removed. ``tenant.key`` is read like every name in the directory (SECURITY.md): opened
non-blocking without following a link, used only if it is a regular file of a trusted
uid; anything else there (a FIFO, another user's file) leaves API keys out of the tenant
labels, counted as ``storage_unavailable``, and is never removed.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import stat
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .labels import as_number
from .record_primitives import RecordPrimitives
from .storage import kinds
from .storage.reader import OPEN_FLAGS, trusted_uids

if TYPE_CHECKING:
    from .collector import MetricsCollector
    from .settings import Settings
    from .storage import DirectoryAccess

TENANT_LABELS = ("team", "api_key", "user")
HASH_KEY_ENV = "GATEWAYZ_METRICS_TENANT_HASH_KEY"
KEY_FILE = "tenant.key"
KEY_BYTES = 32
HASH_PREFIX = "key-"
HASH_DIGITS = 16
"""64 bits of the HMAC: collisions stay negligible at the 1,000 keys a worker admits."""
KEY_RETRY_SECONDS = 1.0
"""After the key file was found unusable, how long API keys are left out before it is
looked at again (so a planted FIFO costs no system calls per request)."""
MAX_HEADER_VALUE = 512
"""Longest header value read as a tenant (longer ones are ignored, not truncated)."""

Tenant = tuple[str | None, str | None, str | None]
"""(team, API key label, user): raw team and user values, the key already hashed or aliased."""


def hash_api_key(api_key: str, key: bytes) -> str:
    """The exported form of an API key: a keyed hash prefix, never the key itself."""
    digest = hmac.new(key, api_key.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return HASH_PREFIX + digest[:HASH_DIGITS]


_key_lock = threading.Lock()


class _KeyUnavailable(OSError):
    """``tenant.key`` exists but is not a key we may use (not a regular file of a trusted
    uid, or of the wrong length and not ours to replace)."""


def directory_key(directory: str, trusted: frozenset[int] | None = None) -> bytes:
    """The hash key kept in the metrics directory, created (atomically, 0600) if missing.

    Every process of a server uses the same directory, so the same key: the first to
    link its new file in wins, the others read it. ``trusted``: the uids whose file is
    accepted (default: ``storage.reader.trusted_uids()``, the rule every file of the
    directory is read by). Raises ``OSError`` (``_KeyUnavailable``) when the name holds
    something else; never blocks.
    """
    path = os.path.join(directory, KEY_FILE)
    uids = trusted_uids() if trusted is None else trusted
    with _key_lock:
        for _ in range(3):
            key = _read_key(path, uids)
            if key is not None:
                return key
            temp = os.path.join(directory, f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, secrets.token_bytes(KEY_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(temp, path)  # fails if another process made it first: then read theirs
            except FileExistsError:
                pass
            finally:
                os.unlink(temp)
    raise OSError(f"cannot read or create the tenant hash key {path!r}")


def _read_key(path: str, trusted: frozenset[int]) -> bytes | None:
    """The key in ``path`` if it is a regular file of a trusted uid holding exactly
    ``KEY_BYTES`` bytes; None if there is none (absent, or a bad one of ours, removed).

    Opened like every name in the metrics directory (``storage.reader.OPEN_FLAGS``:
    non-blocking, no link followed), then checked with ``fstat``: a FIFO, a device or
    another user's file raises ``_KeyUnavailable`` and is left where it is.
    """
    try:
        fd = os.open(path, OPEN_FLAGS)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in trusted:
            raise _KeyUnavailable(f"{path!r} is not a regular file of a trusted user: API keys are not recorded")
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) == KEY_BYTES:
        return data
    if st.st_uid == os.geteuid():
        try:
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            os.unlink(path)  # ours but truncated: replace it (workers then agree on the new one)
            return None
    raise _KeyUnavailable(f"{path!r} does not hold a {KEY_BYTES}-byte key: API keys are not recorded")


def key_bytes(configured: str) -> bytes:
    """The bytes of a configured hash key.

    ``os.environ`` decodes a variable's bytes with ``surrogateescape``: bytes that are not
    UTF-8 arrive as lone surrogates U+DC80..U+DCFF, which that handler turns back into
    the environment's original bytes (a plain UTF-8 key is unchanged). Any other lone
    surrogate (only a str from the app's config can hold one) is kept as its
    ``surrogatepass`` bytes: every str is a usable key, never an error in a request.
    """
    try:
        return str.encode(configured, "utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return str.encode(configured, "utf-8", "surrogatepass")


def header_keys(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """(label, WSGI environ key) pairs for the tenant headers setting."""
    if not headers:
        return ()
    return tuple((label, "HTTP_" + name.upper().replace("-", "_")) for label, name in headers.items())


def from_environ(environ: Mapping[str, Any], keys: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """The tenant labels found in the request's headers (bounded, strings only)."""
    found = {}
    for label, key in keys:
        value = environ.get(key)
        if isinstance(value, str) and 0 < len(value) <= MAX_HEADER_VALUE:
            value = value.strip()
            if value.lower().startswith("bearer ") and label == "api_key":
                value = value[7:].strip()  # an Authorization header: the key is the token
            if value:
                found[label] = value
    return found


def tenant_from_headers(environ: Mapping[str, Any], settings: Settings, collector: MetricsCollector) -> Tenant | None:
    """The tenant the request's headers name (``tenant_headers`` setting), if any; never
    raises (runs in every request)."""
    try:
        found = from_environ(environ, header_keys(settings.tenant_headers))
        if not found:
            return None
        hash_key = settings.tenant_hash_key
        return collector.tenant(found.get("team"), found.get("api_key"), found.get("user"), None, hash_key)
    except Exception:  # metrics never break the application
        return None


class TenantRecording(RecordPrimitives):
    """Tenant methods of ``MetricsCollector`` (writing through ``RecordPrimitives``)."""

    directory: str
    error_status: int
    tenant_hash_key: str | None = None
    """The API-key hash key (the ``tenant_hash_key`` setting); None: the environment
    variable, else the metrics directory's key."""
    _tenant_key: tuple[str | None, bytes] | None = None
    _tenant_key_retry_at = 0.0
    """Monotonic time before which the directory's key is not looked for again (it was
    found unusable)."""
    tenant_key_problem: str | None = None
    """Why this process records API keys without their hash (the directory's key is
    unusable), for ``/metrics/health``; None once a key was found."""

    if TYPE_CHECKING:
        _storage: DirectoryAccess

        def _internal_error(self, exc: Exception) -> None: ...
        def _log_rate_limited(self, message: str, arg: object) -> None: ...

    def _hash_key(self, configured: str | None) -> bytes:
        configured = configured or self.tenant_hash_key or os.environ.get(HASH_KEY_ENV) or None
        cached = self._tenant_key
        if cached is not None and cached[0] == configured:
            return cached[1]
        if configured is None:
            if time.monotonic() < self._tenant_key_retry_at:
                raise _KeyUnavailable("the tenant hash key in the metrics directory is unusable")
            try:
                key = directory_key(self.directory, self._storage.trusted)
            except OSError as exc:
                self._tenant_key_retry_at = time.monotonic() + KEY_RETRY_SECONDS
                self.tenant_key_problem = f"tenant API keys are not recorded: {exc}"
                raise
            self.tenant_key_problem = None
        elif isinstance(configured, str):
            key = key_bytes(configured)
        else:
            raise TypeError(f"the tenant hash key must be a str, got {type(configured).__name__}")
        self._tenant_key = (configured, key)
        return key

    def tenant(
        self,
        team: object = None,
        api_key: object = None,
        user: object = None,
        api_key_alias: object = None,
        hash_key: str | None = None,
    ) -> Tenant | None:
        """The tenant to record for these raw values (None when none is given).

        ``api_key`` is hashed here (or replaced by ``api_key_alias``): only the label
        leaves this call. Values that are not strings are kept as given, and dropped as
        invalid labels when recorded.
        """
        key_label: object = None
        if isinstance(api_key_alias, str) and api_key_alias:
            key_label = api_key_alias
        elif isinstance(api_key, str) and api_key:
            try:
                key_label = hash_api_key(api_key, self._hash_key(hash_key))
            except OSError as exc:
                key_label = None  # no key to hash with: the key is left out, never kept raw
                self._log_rate_limited("tenant API keys are not recorded: %s", exc)
                self._drop("storage_unavailable")
            except Exception as exc:  # a hash key that is no str: never an error in the request
                key_label = None
                self._internal_error(exc)
        elif api_key is not None:
            key_label = ""  # not a usable key: recorded as an invalid label, never raw
        if team is None and key_label is None and user is None:
            return None
        return (team, key_label, user)  # type: ignore[return-value]

    def record_tenant_request(self, tenant: Tenant, status: int, failed: bool = False) -> None:
        """Count one request of ``tenant`` (``gatewayz_tenant_requests_total`` / ``_errors_total``)."""
        if status.__class__ is not int or not 100 <= status <= 599:
            return self._drop("invalid_status")
        error = 1.0 if failed or status >= self.error_status else 0.0
        increments = ((kinds.TENANT_REQUESTS, 1.0), (kinds.TENANT_ERRORS, error))
        self._add_tenant("tenant_request", tenant, (f"{status // 100}xx",), increments)
        return None

    def record_tenant_usage(self, tenant: Tenant, counts: list[float], cost: float | None) -> None:
        """Add one LLM call's tokens (input, output, cached input) and cost to ``tenant``."""
        for direction, count in zip(("input", "output", "cached_input"), counts, strict=True):
            if count:
                self._add_tenant("tenant_tokens", tenant, (direction,), ((kinds.VALUE, count),))
        if cost:
            self._add_tenant("tenant_cost", tenant, (), ((kinds.VALUE, cost),))

    def set_budget_remaining(self, team: str, remaining_usd: float) -> None:
        """Report the budget ``team`` has left in US dollars (``llm_budget_remaining_usd``;
        the latest value set by any process wins). Negative values are kept: overspent."""
        value = as_number(remaining_usd)  # NaN for a bool, a non-number or a raising __float__
        if not math.isfinite(value):  # inf also for an int past float's range (10**400)
            return self._drop("invalid_value")
        self._add("budget", (("team", team),), (), latest=(value,))
        return None
