"""The write primitives the recording mixins of ``MetricsCollector`` build on, declared once.

``record_writer.RecordWriter`` implements ``_add``, ``_add_tenant``, ``_write_record`` and
``_admit``; the collector ``_drop``; ``native_histograms.NativeRecording``
``_record_native``. A mixin that calls them (``llm.GatewayRecording``,
``tenants.TenantRecording``) inherits ``RecordPrimitives``, so a type checker knows their
signatures from this one place. At run time the class is empty: the collector's own
methods are the only ones there are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tenants import Tenant

Increments = tuple[tuple[int, float], ...]
"""(payload index, amount) pairs added to one record."""
RawLabels = tuple[tuple[str, object], ...]
"""(label name, raw value) pairs, admitted (checked, bounded) when written."""


class RecordPrimitives:
    """Declarations of the collector's write primitives, for the mixins that call them."""

    if TYPE_CHECKING:

        def _add(
            self, kind: str, labels: RawLabels, increments: Increments, latest: tuple[float, ...] | None = None
        ) -> None:
            """Add ``increments`` to the record of ``kind`` for ``labels``, or set ``latest``."""

        def _add_tenant(self, kind: str, tenant: Tenant, extra: tuple[str, ...], increments: Increments) -> None:
            """``_add`` for a tenant's record (its labels, then ``extra``)."""

        def _write_record(
            self,
            kind: str,
            values: Callable[[], tuple[str, ...]],
            increments: Increments,
            latest: tuple[float, ...] | None = None,
        ) -> None:
            """``_add`` with the label values already admitted, computed by ``values`` when needed."""

        def _admit(self, name: str, raw: object) -> str:
            """The value recorded for label ``name`` (checked against its limit and allowlist)."""
            raise NotImplementedError

        def _drop(self, reason: str, leaving: bool = False) -> None:
            """Count input that was not recorded, under ``reason``."""

        def _record_native(self, kind: str, labels: RawLabels, value: float) -> None:
            """Count ``value`` in the native-histogram record ``kind`` for ``labels``."""
