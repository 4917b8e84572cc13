"""Watching a streamed response body: first chunk, end, and how it ended.

The server iterates the body after the view returned and always calls ``close()``
(PEP 3333), also when the client went away. So: the first item yielded is the first
chunk; exhaustion is ``completed``; an exception from the body is ``error`` (re-raised);
``close()`` before either is ``client_disconnect``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from time import perf_counter
from typing import Any

OnEnd = Callable[[str, float | None], None]
"""Called once with the outcome and the first-chunk time (perf_counter), if any."""


class ObservedStream:
    """Wraps a response body iterable; reports its outcome once to ``on_end``."""

    def __init__(self, body: Iterable[Any], on_end: OnEnd) -> None:
        self._body = body
        self._on_end = on_end
        self._first_chunk: float | None = None
        self._outcome: str | None = None

    def __iter__(self) -> Iterator[Any]:
        try:
            for chunk in self._body:
                if self._first_chunk is None:
                    self._first_chunk = perf_counter()
                yield chunk
        except GeneratorExit:
            raise  # closed early by the server: reported by close()
        except BaseException:
            self._finish("error")
            raise
        self._finish("completed")

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._finish("client_disconnect")

    def _finish(self, outcome: str) -> None:
        if self._outcome is None:
            self._outcome = outcome
            self._on_end(outcome, self._first_chunk)
