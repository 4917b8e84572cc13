"""Metric families of tenants (see ``tenants``): their own families, so the spec's keep
exactly their names and label sets."""

from __future__ import annotations

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from .exposition_common import fill
from .snapshot import Snapshot
from .storage import kinds

TENANT = ["team", "api_key", "user"]
"""The labels of a tenant (``tenants.Tenant``), before each family's own."""


def tenant_families(snap: Snapshot, empty_too: bool = False) -> list[Metric]:
    """Requests, errors, tokens and cost per tenant; each team's remaining budget.

    Only the families that have samples (a gateway without tenants serves none of them),
    unless ``empty_too`` (to list every name we serve)."""
    requests = CounterMetricFamily(
        "gatewayz_tenant_requests",
        "HTTP requests per tenant (team, api_key: hashed or alias, user; \"\" = not given), by status class.",
        labels=[*TENANT, "status_class"],
    )
    errors = CounterMetricFamily(
        "gatewayz_tenant_errors",
        "Failed HTTP requests per tenant (status >= the error threshold, or an exception).",
        labels=TENANT,
    )
    per_tenant: dict[tuple[str, ...], float] = {}
    for key, payload in snap.series("tenant_request"):
        requests.add_metric(list(key), payload[kinds.TENANT_REQUESTS])
        per_tenant[key[:3]] = per_tenant.get(key[:3], 0.0) + payload[kinds.TENANT_ERRORS]
    for tenant, count in sorted(per_tenant.items()):
        errors.add_metric(list(tenant), count)
    tokens = CounterMetricFamily(
        "gatewayz_tenant_tokens", "LLM tokens per tenant, by direction.", labels=[*TENANT, "direction"]
    )
    fill(tokens, snap, "tenant_tokens")
    cost = CounterMetricFamily("gatewayz_tenant_cost_usd", "Cost of LLM calls per tenant in US dollars.", labels=TENANT)
    fill(cost, snap, "tenant_cost")
    budget = GaugeMetricFamily(
        "llm_budget_remaining_usd", "Budget a team has left in US dollars (latest value set).", labels=["team"]
    )
    for key, payload in snap.series("budget"):
        budget.add_metric(list(key), payload[kinds.BUDGET_REMAINING])
    return [family for family in (requests, errors, tokens, cost, budget) if empty_too or family.samples]
