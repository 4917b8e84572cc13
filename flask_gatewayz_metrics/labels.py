"""Label values: validation, normalisation and cardinality guards.

Each process admits at most ``limits[name]`` distinct values of a label (or only the
values of an allowlist); further values are recorded as ``other`` and counted (once per refused value) in
``gatewayz_metrics_label_overflow_total{label}``, so a flood of random model names or
service names cannot create unbounded series. Checked only when a new label
combination is first seen, never on the cached request path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

MAX_LABEL_LENGTH = 200
OVERFLOW_VALUE = "other"
DEFAULT_LIMITS: dict[str, int] = {
    "endpoint": 1000, "provider": 50, "model": 200, "service": 50,
    "team": 100, "api_key": 1000, "user": 1000,
}  # fmt: skip
"""Distinct values per label and process before new ones collapse into ``other``."""
MAX_REMEMBERED_OVERFLOWS = 10_000
"""Refused values remembered per label so each is counted once (memory stays bounded)."""
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})


def as_number(value: object) -> float:
    """``value`` as a float if it is a real number (not a bool or string), else NaN.

    An int past float's range is ``inf``; an int or float subclass whose ``__float__``
    raises is NaN (every caller drops NaN as invalid): this never raises.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return math.inf
        except Exception:  # a subclass's own __float__
            return math.nan
    return math.nan


def as_flag(value: object) -> bool | None:
    """``value``'s truth (an ``error=`` argument), or None when its ``__bool__`` (or
    ``__len__``) raises, for the caller to drop as ``invalid_value``; this never raises."""
    try:
        return bool(value)
    except Exception:
        return None


def as_status(value: object) -> object:
    """An HTTP status code as a plain ``int``: an ``int`` subclass (``http.HTTPStatus``, an
    ``IntEnum``, which Flask accepts as a view's status) becomes its value. Anything else
    (a bool, a float, None, a string) is returned unchanged, and a subclass whose ``__int__``
    raises becomes None, for the caller to drop as ``invalid_status``; this never raises."""
    if isinstance(value, int) and value.__class__ is not bool:
        try:
            return int(value)
        except Exception:  # a subclass's own __int__
            return None
    return value


def plain_str(value: object) -> str | None:
    """``value`` as a plain ``str`` (None if it is no str), for comparing with a closed
    list or formatting: a ``str`` subclass is copied through ``str``'s own slicing, so its
    methods (a ``__hash__`` or ``__eq__`` that raises, a lying ``__str__``) never run."""
    if type(value) is str:
        return value
    if isinstance(value, str):
        return str.__getitem__(value, slice(None))
    return None


def clean_label(value: object) -> str | None:
    """A label value fit for exposition, or None if ``value`` is not usable as one."""
    value = plain_str(value)  # a subclass's methods (a __hash__ of None) never run on what we keep
    if not value:
        return None
    if len(value) > MAX_LABEL_LENGTH:
        value = value[:MAX_LABEL_LENGTH]
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> "?"
    return value


def method_label(method: object) -> str | None:
    """An HTTP method as a label: upper-cased if known, ``OTHER`` if not, None for a non-string."""
    if not isinstance(method, str):
        return None
    upper = method.upper()
    return upper if upper in KNOWN_METHODS else "OTHER"


class LabelGuard:
    """Admits label values up to a per-label limit or from an allowlist."""

    def __init__(
        self, limits: Mapping[str, int] | None = None, allowed: Mapping[str, Iterable[str]] | None = None
    ) -> None:
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        self.allowed = {name: frozenset(values) for name, values in (allowed or {}).items()}
        self._seen: dict[str, set[str]] = {}
        self._overflowed: dict[str, set[str]] = {}

    def admit(self, name: str, raw: object) -> tuple[str | None, bool]:
        """``(label value, overflowed)``; the value is None when ``raw`` is unusable."""
        value = clean_label(raw)
        if value is None:
            return None, False
        seen = self._seen.setdefault(name, set())
        if value in seen:
            return value, False
        allowed = self.allowed.get(name)
        if allowed is not None:
            admitted = value in allowed
        else:
            admitted = len(seen) < self.limits.get(name, DEFAULT_LIMITS["endpoint"])
        if not admitted:
            # Count each refused value once (remembering at most MAX_REMEMBERED_OVERFLOWS).
            overflowed = self._overflowed.setdefault(name, set())
            if value in overflowed:
                return OVERFLOW_VALUE, False
            if len(overflowed) < MAX_REMEMBERED_OVERFLOWS:
                overflowed.add(value)
            return OVERFLOW_VALUE, True
        seen.add(value)
        return value, False
