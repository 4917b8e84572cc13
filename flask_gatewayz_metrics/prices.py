"""The price table ``record_tokens`` uses when the caller gives no ``cost_usd``.

Supplied by the user (``GATEWAYZ_METRICS_PRICES``: a dict, or the path of a JSON file
holding the same dict), never built in: list prices change, and a stale table would make
every cost silently wrong. Per model, USD per million tokens::

    {"gpt-4o": {"input": 2.50, "output": 10.00, "cached_input": 1.25}}

``cached_input_tokens`` are read as the part of ``input_tokens`` served from the
provider's prompt cache (OpenAI's and the OpenTelemetry conventions' reading), so they
are billed at ``cached_input`` (default: the ``input`` price) and the rest of the input
at ``input``. A model not in the table gets no cost (its tokens are still counted).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .labels import as_number

MAX_FILE_BYTES = 1 << 20
MAX_MODELS = 10_000
FIELDS = ("input", "output", "cached_input")
PER_TOKENS = 1_000_000.0


@dataclass(frozen=True)
class Price:
    """USD per million tokens of one model."""

    input: float
    output: float
    cached_input: float


class PriceTable:
    """Validated prices by model name (see the module docstring for the format)."""

    def __init__(self, prices: Mapping[str, Price], source: str = "dict") -> None:
        self.prices = dict(prices)
        self.source = source

    def __len__(self) -> int:
        return len(self.prices)

    def __repr__(self) -> str:
        return f"PriceTable({len(self.prices)} models from {self.source})"

    def cost(self, model: str, input_tokens: float, output_tokens: float, cached_input_tokens: float) -> float | None:
        """The cost in USD of one call, or None when ``model`` has no price."""
        price = self.prices.get(model)
        if price is None:
            return None
        uncached = max(input_tokens - cached_input_tokens, 0.0)
        return (
            uncached * price.input + cached_input_tokens * price.cached_input + output_tokens * price.output
        ) / PER_TOKENS


def load_prices(value: Any) -> PriceTable:
    """A ``PriceTable`` from a dict, or from the path (str or os.PathLike) of a JSON file.

    Raises ``TypeError`` / ``ValueError`` whose message names the file, the model and the
    field at fault.
    """
    if isinstance(value, PriceTable):
        return value
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"price file {path!r} cannot be read: {exc.strerror or exc}") from None
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError(f"price file {path!r} is larger than {MAX_FILE_BYTES} bytes")
        try:
            data = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise ValueError(f"price file {path!r} is not valid JSON: {exc}") from None
        try:
            return PriceTable(_parse(data), path)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"price file {path!r}: {exc}") from None
    return PriceTable(_parse(value))


def _parse(data: Any) -> dict[str, Price]:
    if not isinstance(data, Mapping):
        raise TypeError(f"expected a dict of model name to prices, got {type(data).__name__}")
    if len(data) > MAX_MODELS:
        raise ValueError(f"more than {MAX_MODELS} models")
    out = {}
    for model, entry in data.items():
        if not isinstance(model, str) or not model:
            raise TypeError(f"model names must be non-empty str, got {model!r}")
        if not isinstance(entry, Mapping):
            raise TypeError(
                f"model {model!r} must map to a dict like {{'input': 2.5, 'output': 10.0}}, got {type(entry).__name__}"
            )
        unknown = set(entry) - set(FIELDS)
        if unknown:
            raise ValueError(f"model {model!r} has unknown field(s) {sorted(map(str, unknown))}; known: {FIELDS}")
        numbers = {}
        for field in FIELDS:
            if field not in entry:
                if field == "cached_input":
                    continue
                raise ValueError(f"model {model!r} needs {field!r} (USD per million tokens)")
            number = entry[field]
            if not isinstance(number, (int, float)) or isinstance(number, bool):
                raise TypeError(
                    f"model {model!r} field {field!r} must be a number (USD per million tokens), "
                    f"got {type(number).__name__} {_shown(number)}"
                )
            value = as_number(number)  # inf past float's range, NaN for a subclass's raising __float__
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"model {model!r} field {field!r} must be a finite number >= 0, got {_shown(number)}")
            numbers[field] = value
        numbers.setdefault("cached_input", numbers["input"])
        out[model] = Price(**numbers)
    return out


def _shown(value: object) -> str:
    """``value`` for an error message: its repr, at most 40 characters (an int of more
    digits than Python will convert, or a repr that raises, is shown by its type)."""
    try:
        text = repr(value)
    except Exception:
        return f"a {type(value).__name__} that cannot be shown"
    return text if len(text) <= 40 else text[:37] + "..."
