"""The collector's write primitives declared once (``record_primitives``): the recording
mixins inherit the declarations, and nothing of them exists at run time."""

from __future__ import annotations

import inspect

from flask_gatewayz_metrics import MetricsCollector
from flask_gatewayz_metrics.llm import GatewayRecording
from flask_gatewayz_metrics.record_primitives import RecordPrimitives
from flask_gatewayz_metrics.record_writer import RecordWriter
from flask_gatewayz_metrics.tenants import TenantRecording

PRIMITIVES = ("_add", "_add_tenant", "_write_record", "_admit", "_drop", "_record_native")


def test_mixins_inherit_the_one_declaration() -> None:
    """GatewayRecording and TenantRecording inherit RecordPrimitives and declare none of them again."""
    for mixin in (GatewayRecording, TenantRecording):
        assert issubclass(mixin, RecordPrimitives)
        assert not set(vars(mixin)) & set(PRIMITIVES), mixin


def test_declarations_are_empty_at_run_time() -> None:
    """RecordPrimitives has no methods at run time: the collector resolves each primitive to the real one."""
    assert not [name for name, member in vars(RecordPrimitives).items() if inspect.isfunction(member)]
    assert MetricsCollector._add is RecordWriter._add
    for name in PRIMITIVES:
        owner = next(cls for cls in MetricsCollector.__mro__ if name in vars(cls))
        assert owner is not RecordPrimitives, name
