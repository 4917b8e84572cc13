"""Checkers of setting values, one per type of value: each returns the value normalised or
raises a bare ``TypeError`` / ``ValueError`` (with a detail at most), and
``settings.check`` turns that into an error naming the key and what it expects.

The table of settings (defaults, types, precedence) is ``settings``; this module is how a
value of each type is read.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from .prices import PriceTable, load_prices
from .static_labels import parse_static_labels
from .storage.kinds import MAX_HISTOGRAM_BUCKETS

SEMCONV_CHOICES = ("both", "metrics", "otlp", "off")
"""Where the OpenTelemetry semantic conventions' families are served (as ``exposition``)."""

def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(low: float, high: float) -> Callable[[Any], float]:
    """A checker of finite numbers between ``low`` and ``high`` (as float)."""

    def checked(value: Any) -> float:
        if not is_number(value):
            raise TypeError
        found = float(value)
        if not (math.isfinite(found) and low <= found <= high):
            raise ValueError
        return found

    return checked


MIN_WINDOW_SECONDS = 0.001
"""The shortest window but 0 (since start): with up to 1,024 slots, each slot stays wider
than the 1 ns the storage reader accepts (``storage.reader.MIN_SLOT_SECONDS``)."""


def window_seconds(value: Any) -> float:
    """A window length: 0 (one slot since start) or ``MIN_WINDOW_SECONDS`` to one year."""
    found = number(0.0, 366 * 86400.0)(value)
    if 0.0 < found < MIN_WINDOW_SECONDS:
        raise ValueError
    return found


def integer(low: int, high: int) -> Callable[[Any], int]:
    """A checker of ints between ``low`` and ``high`` (an integral float is taken as an int)."""

    def checked(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError
        if not low <= value <= high:
            raise ValueError
        return value

    return checked


def flag(value: Any) -> bool:
    """A bool."""
    if not isinstance(value, bool):
        raise TypeError
    return value


def text(required: bool) -> Callable[[Any], str | None]:
    """A checker of str values (``required``: not empty, not None)."""

    def checked(value: Any) -> str | None:
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise TypeError
        if required and not value:
            raise ValueError
        return value

    return checked


APP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")


def app_name(value: Any) -> str | None:
    """An app's name for its own numbers (``APP_NAME``: no "-", so that ``named-<name>``
    never equals an automatic ``<import name>-<n>``), or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError
    if not APP_NAME.fullmatch(value):
        raise ValueError
    return value


def path(value: Any) -> str | None:
    """A path (str or os.PathLike) without NUL, or None."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError
    if not value or "\0" in value:
        raise ValueError
    return value


def url_prefix(value: Any) -> str:
    """A URL path starting with ``/``, without white space."""
    if not isinstance(value, str):
        raise TypeError
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError
    return value


def limits(value: Any) -> Mapping[str, int] | None:
    """Label name -> non-negative int, or None."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError
    checked = {}
    for label, limit in value.items():
        if not isinstance(label, str) or not isinstance(limit, int) or isinstance(limit, bool):
            raise TypeError
        if limit < 0:
            raise ValueError
        checked[label] = limit
    return checked


def patterns(value: Any) -> tuple[str, ...]:
    """A list of regular expressions (``EXCLUDED_PATHS``), each one's meaning kept where
    they are used.

    The request path tries them as one alternation, ``(?:p1)|(?:p2)|...`` matched at the
    start of the path (one ``re`` call per request, as cheap with many patterns as with
    one; ``request_timing.timed`` builds it). What cannot stand inside such an
    alternation is made to, or refused here with the reason, never left to fail at start
    with a bare ``re.error`` or to change meaning silently:

    - leading global flags, ``(?i)/health``, become a group scoped to the whole pattern,
      ``(?i:/health)``: the same expression, which may stand inside the alternation;
    - a numbered group reference (``\\1``, ``(?(1)...)``) in a pattern after one with
      groups would mean that earlier pattern's group: refused (a named group,
      ``(?P<n>...)`` with ``(?P=n)``, keeps its meaning);
    - group names used in two patterns, or a global flag not at the start (a
      deprecation, applied to every pattern, before Python 3.11): refused.

    Returns the patterns as they are to be joined (unchanged but for scoped flags).
    """
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError
    if not all(isinstance(pattern, str) for pattern in value):
        raise TypeError
    with warnings.catch_warnings():
        # Python 3.10 only warns of a global flag not at the start (3.11 refuses it):
        # refused here on every version, with 3.11's words.
        warnings.simplefilter("error", DeprecationWarning)
        try:
            return _joinable(value)
        except DeprecationWarning:
            raise ValueError(f"{_FLAG_NOT_AT_START}: a global flag such as (?i) must start its pattern") from None


_FLAG_NOT_AT_START = "global flags not at the start of the expression"


def _joinable(value: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``patterns``' checks and result (``DeprecationWarning`` raised as an error)."""
    joinable = []
    groups_before = 0
    for pattern in value:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r}: {exc}") from None
        reference = _numbered_reference(pattern, verbose=bool(compiled.flags & re.VERBOSE))
        if groups_before and reference is not None:
            raise ValueError(
                f"{pattern!r}: the numbered group reference {reference} would mean a group of an earlier "
                "pattern once the patterns are tried together; use a named group, (?P<name>...) and (?P=name)"
            )
        groups_before += compiled.groups
        joinable.append(_scoped_flags(pattern))
    if joinable:
        try:  # exactly as the request path joins them
            joined = re.compile("|".join(f"(?:{pattern})" for pattern in joinable))
        except re.error as exc:
            raise ValueError(f"the patterns cannot be tried together: {exc}") from None
        if joined.flags & ~re.UNICODE:  # only before 3.11: a global flag in the middle of a pattern
            raise ValueError(f"{_FLAG_NOT_AT_START}: a global flag such as (?i) must start its pattern")
    return tuple(joinable)


_LEADING_FLAGS = re.compile(r"(?:\(\?[aiLmsux]+\))+")
"""Global inline flags at the start of a pattern, e.g. ``(?i)`` or ``(?i)(?s)``."""
_OCTAL_ESCAPE = re.compile(r"[0-7]{3}")


def _scoped_flags(pattern: str) -> str:
    """``pattern`` with its leading global flags turned into a group scoped to the whole
    pattern (``(?i)/a`` -> ``(?i:/a)``): the same expression, but one that may stand
    inside an alternation (Python 3.11 refuses global flags anywhere but at the start of
    the whole expression; earlier versions applied them to every alternative)."""
    head = _LEADING_FLAGS.match(pattern)
    if head is None:
        return pattern
    flags = "".join(dict.fromkeys(c for c in head.group() if c.isalpha()))
    # Verbose: a comment on the last line would run on and swallow the closing
    # parenthesis; a newline ends it (and is white space verbose mode ignores).
    end = "\n)" if "x" in flags else ")"
    return f"(?{flags}:{pattern[head.end() :]}{end}"


def _numbered_reference(pattern: str, verbose: bool) -> str | None:
    """The first numbered group reference of ``pattern`` (a pattern that compiles):
    ``\\1`` to ``\\99`` outside a character class (three octal digits are an escape),
    or a condition on a numbered group, ``(?(1)...)``. ``verbose``: skip ``#`` comments."""
    i, end, in_class = 0, len(pattern), False
    while i < end:
        c = pattern[i]
        if c == "\\":
            if (
                not in_class
                and pattern[i + 1 : i + 2] in tuple("123456789")
                and not _OCTAL_ESCAPE.match(pattern, i + 1)
            ):
                digits = pattern[i + 1 : i + 3]
                return "\\" + (digits if digits.isdigit() else digits[0])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 1
            i += pattern.startswith("^", i)
            i += pattern.startswith("]", i)  # a "]" first in a class is a literal
            continue
        elif verbose and c == "#":
            newline = pattern.find("\n", i)
            i = end if newline < 0 else newline
        elif pattern.startswith("(?(", i):
            name = pattern[i + 3 : pattern.find(")", i + 3)]
            if name.isdigit():
                return f"(?({name})"
        i += 1
    return None


def function(value: Any) -> Callable[[Any], bool] | None:
    """A callable (``auth_check``), or None."""
    if value is not None and not callable(value):
        raise TypeError
    return value  # type: ignore[no-any-return]


def uids(value: Any) -> tuple[int, ...] | None:
    """Non-negative int uids (sorted), or None."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError
    if not all(isinstance(uid, int) and not isinstance(uid, bool) for uid in value):
        raise TypeError
    if any(uid < 0 for uid in value):
        raise ValueError
    return tuple(sorted(value))


def label_values(value: Any) -> str | tuple[str, ...] | None:
    """A comma-separated str, or a collection of str (as a tuple), or None."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError
    if not all(isinstance(item, str) for item in value):
        raise TypeError
    return tuple(value)


def prices(value: Any) -> PriceTable | None:
    """A price table (``prices.load_prices``), or None."""
    return None if value is None else load_prices(value)


def static_labels(value: Any) -> Mapping[str, str] | None:
    """Static labels (``static_labels.parse_static_labels``), or None when there are none."""
    return None if value is None else parse_static_labels(value) or None


def port(value: Any) -> int | None:
    """A TCP port (an int, or its digits from the environment), or None."""
    if isinstance(value, str) and value.isdigit() and len(value) <= 5:  # from the environment
        value = int(value)
    return None if value is None else integer(1, 65535)(value)


def address(value: Any) -> str:
    """A host name or IP address to bind (no brackets, no white space)."""
    if not isinstance(value, str):
        raise TypeError
    if not value or len(value) > 255 or any(c.isspace() or c in "/[]" for c in value):
        raise ValueError
    return value


def is_http_url(value: str) -> bool:
    """Whether ``value`` looks like an http:// or https:// URL: that scheme in any case
    (RFC 3986: schemes are case-insensitive), no whitespace, at most 2048 characters."""
    return value[:8].lower().startswith(("http://", "https://")) and not any(c.isspace() for c in value) and (
        len(value) <= 2048
    )


def http_url(value: Any) -> str | None:
    """An http:// or https:// URL (``is_http_url``), or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError
    if not is_http_url(value):
        raise ValueError
    return value




def semconv(value: Any) -> str:
    """One of ``SEMCONV_CHOICES`` (case and surrounding space ignored)."""
    if not isinstance(value, str):
        raise TypeError
    if value.strip().lower() not in SEMCONV_CHOICES:
        raise ValueError
    return value.strip().lower()


HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}")


def tenant_headers(value: Any) -> Mapping[str, str] | None:
    """Tenant label (team, api_key, user) -> a valid header name, or None."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError
    checked = {}
    for label, header in value.items():
        if not isinstance(label, str) or not isinstance(header, str):
            raise TypeError
        if label not in ("team", "api_key", "user") or not HEADER_NAME.fullmatch(header):
            raise ValueError(f"{label!r}: {header!r}")
        checked[label] = header
    return checked


def buckets(value: Any) -> tuple[float, ...] | None:
    """1 to ``MAX_HISTOGRAM_BUCKETS`` finite, increasing bounds > 0 (a last +Inf dropped), or None."""
    if value is None:
        return None
    if isinstance(value, str):  # from the environment: "0.1,0.5,1"
        try:
            value = [float(part) for part in value.split(",")] if len(value) <= 4096 else None
        except ValueError:
            raise ValueError("not a comma-separated list of numbers") from None
    if not isinstance(value, (list, tuple)) or not all(is_number(b) for b in value):
        raise TypeError
    bounds = [float(b) for b in value]
    if bounds and bounds[-1] == math.inf:  # prometheus_client's style: +Inf is implied
        bounds.pop()
    if not 1 <= len(bounds) <= MAX_HISTOGRAM_BUCKETS:
        raise ValueError(f"{len(bounds)} finite bounds")
    if not all(math.isfinite(b) and b > 0 for b in bounds):
        raise ValueError("a bound is not a finite number > 0")
    if any(low >= high for low, high in itertools.pairwise(bounds)):
        raise ValueError("the bounds are not strictly increasing")
    return tuple(bounds)
