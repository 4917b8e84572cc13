"""Prometheus exposition: exact 0.0.4 text, HELP/TYPE for every family, negotiation, parsers."""

from __future__ import annotations

import math
import platform

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.utils import floatToGoString

from flask_gatewayz_metrics import MetricsCollector, PrometheusExporter, sketch

SPEC_FAMILIES = {
    "http_request_latency_avg_seconds": "gauge",
    "http_request_latency_p50_seconds": "gauge",
    "http_request_latency_p95_seconds": "gauge",
    "http_request_latency_p99_seconds": "gauge",
    "http_requests_total": "counter",
    "http_request_errors_total": "counter",
    "http_response_status_total": "counter",
    "provider_requests_total": "counter",
    "provider_errors_total": "counter",
    "provider_error_rate": "gauge",
    "provider_latency_avg_seconds": "gauge",
    "provider_latency_min_seconds": "gauge",
    "provider_latency_max_seconds": "gauge",
    "provider_latency_p95_seconds": "gauge",
    "model_requests_total": "counter",
    "model_errors_total": "counter",
    "model_error_rate": "gauge",
    "model_latency_avg_seconds": "gauge",
    "cache_hits_total": "counter",
    "cache_misses_total": "counter",
    "cache_hit_rate": "gauge",
    "db_queries_total": "counter",
    "db_query_latency_avg_seconds": "gauge",
    "external_api_calls_total": "counter",
    "external_api_errors_total": "counter",
    "gatewayz_uptime_seconds": "gauge",
}
OUR_FAMILIES = {
    "http_request_duration_seconds": "histogram",
    "provider_request_duration_seconds": "histogram",
    "gatewayz_metrics_dropped_total": "counter",
    "gatewayz_metrics_storage_errors_total": "counter",
    "gatewayz_metrics_worker_files": "gauge",
    "gatewayz_metrics_label_overflow_total": "counter",
    "llm_tokens_total": "counter",
    "llm_request_tokens": "histogram",
    "llm_cost_usd_total": "counter",
    "provider_errors_by_type_total": "counter",
    "llm_provider_fallbacks_total": "counter",
    "llm_rate_limit_remaining": "gauge",
    "llm_streams_total": "counter",
    "llm_time_to_first_chunk_seconds": "histogram",
    "llm_stream_duration_seconds": "histogram",
    "http_requests_in_flight": "gauge",
    "gatewayz_build_info": "gauge",
    "gatewayz_start_time_seconds": "gauge",
    "http_request_latency_min_seconds": "gauge",
    "http_request_latency_max_seconds": "gauge",
    "provider_latency_p50_seconds": "gauge",
    "provider_latency_p99_seconds": "gauge",
    "model_latency_min_seconds": "gauge",
    "model_latency_max_seconds": "gauge",
    "model_latency_p50_seconds": "gauge",
    "model_latency_p95_seconds": "gauge",
    "model_latency_p99_seconds": "gauge",
    "db_query_latency_min_seconds": "gauge",
    "db_query_latency_max_seconds": "gauge",
    # The OpenTelemetry semantic conventions' histograms (exposition_semconv).
    "gen_ai_client_token_usage": "histogram",
    "gen_ai_client_operation_duration_seconds": "histogram",
    "gen_ai_server_request_duration_seconds": "histogram",
    "gen_ai_server_time_to_first_token_seconds": "histogram",
    "gen_ai_server_time_per_output_token_seconds": "histogram",
    "http_server_request_duration_seconds": "histogram",
}

# p50 of {0.25, 0.75} is 0.25: its sketch bucket's representative (P_025) is below the
# window's exact min, so the min answers; p95/p99 are 0.75's representative.
P_025 = "0.24729249968665737"
P_075 = "0.7464100874755201"

EXPECTED = """\
# HELP http_request_latency_avg_seconds Average request latency per endpoint over the sliding window.
# TYPE http_request_latency_avg_seconds gauge
http_request_latency_avg_seconds{endpoint="/api/chat"} 0.5
# HELP http_request_latency_p50_seconds p50 request latency per endpoint over the sliding window.
# TYPE http_request_latency_p50_seconds gauge
http_request_latency_p50_seconds{endpoint="/api/chat"} 0.25
# HELP http_request_latency_p95_seconds p95 request latency per endpoint over the sliding window.
# TYPE http_request_latency_p95_seconds gauge
http_request_latency_p95_seconds{endpoint="/api/chat"} 0.7464100874755201
# HELP http_request_latency_p99_seconds p99 request latency per endpoint over the sliding window.
# TYPE http_request_latency_p99_seconds gauge
http_request_latency_p99_seconds{endpoint="/api/chat"} 0.7464100874755201
# HELP http_request_latency_min_seconds Smallest request latency per endpoint over the sliding window.
# TYPE http_request_latency_min_seconds gauge
http_request_latency_min_seconds{endpoint="/api/chat"} 0.25
# HELP http_request_latency_max_seconds Largest request latency per endpoint over the sliding window.
# TYPE http_request_latency_max_seconds gauge
http_request_latency_max_seconds{endpoint="/api/chat"} 0.75
# HELP http_requests_total HTTP requests.
# TYPE http_requests_total counter
http_requests_total{endpoint="/api/chat",method="POST"} 2.0
# HELP http_request_errors_total HTTP requests that failed (server error status or exception).
# TYPE http_request_errors_total counter
http_request_errors_total{endpoint="/api/chat",method="POST"} 1.0
# HELP http_response_status_total HTTP responses by status code.
# TYPE http_response_status_total counter
http_response_status_total{endpoint="/api/chat",status="200"} 1.0
http_response_status_total{endpoint="/api/chat",status="500"} 1.0
# HELP http_request_duration_seconds HTTP request latency since start.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{endpoint="/api/chat",le="0.005",method="POST"} 0.0
http_request_duration_seconds_bucket{endpoint="/api/chat",le="0.01",method="POST"} 0.0
http_request_duration_seconds_bucket{endpoint="/api/chat",le="0.025",method="POST"} 0.0
http_request_duration_seconds_bucket{endpoint="/api/chat",le="0.05",method="POST"} 0.0
http_request_duration_seconds_bucket{endpoint="/api/chat",le="0.1",method="POST"} 0.0
http_request_duration_seconds_bucket{endpoint="/api/chat",le="0.25",method="POST"} 1.0
http_request_duration_seconds_bucket{endpoint="/api/chat",le="0.5",method="POST"} 1.0
http_request_duration_seconds_bucket{endpoint="/api/chat",le="1.0",method="POST"} 2.0
http_request_duration_seconds_bucket{endpoint="/api/chat",le="2.5",method="POST"} 2.0
http_request_duration_seconds_bucket{endpoint="/api/chat",le="5.0",method="POST"} 2.0
http_request_duration_seconds_bucket{endpoint="/api/chat",le="10.0",method="POST"} 2.0
http_request_duration_seconds_bucket{endpoint="/api/chat",le="30.0",method="POST"} 2.0
http_request_duration_seconds_bucket{endpoint="/api/chat",le="60.0",method="POST"} 2.0
http_request_duration_seconds_bucket{endpoint="/api/chat",le="120.0",method="POST"} 2.0
http_request_duration_seconds_bucket{endpoint="/api/chat",le="300.0",method="POST"} 2.0
http_request_duration_seconds_bucket{endpoint="/api/chat",le="600.0",method="POST"} 2.0
http_request_duration_seconds_bucket{endpoint="/api/chat",le="+Inf",method="POST"} 2.0
http_request_duration_seconds_count{endpoint="/api/chat",method="POST"} 2.0
http_request_duration_seconds_sum{endpoint="/api/chat",method="POST"} 1.0
# HELP provider_requests_total Requests to the AI provider.
# TYPE provider_requests_total counter
provider_requests_total{provider="openai"} 2.0
# HELP provider_errors_total Failed requests to the AI provider.
# TYPE provider_errors_total counter
provider_errors_total{provider="openai"} 1.0
# HELP provider_error_rate Share of the provider's requests that failed over the sliding window (0-1).
# TYPE provider_error_rate gauge
provider_error_rate{provider="openai"} 0.5
# HELP provider_latency_avg_seconds avg provider latency over the sliding window.
# TYPE provider_latency_avg_seconds gauge
provider_latency_avg_seconds{provider="openai"} 0.5
# HELP provider_latency_min_seconds min provider latency over the sliding window.
# TYPE provider_latency_min_seconds gauge
provider_latency_min_seconds{provider="openai"} 0.25
# HELP provider_latency_max_seconds max provider latency over the sliding window.
# TYPE provider_latency_max_seconds gauge
provider_latency_max_seconds{provider="openai"} 0.75
# HELP provider_latency_p50_seconds p50 provider latency over the sliding window.
# TYPE provider_latency_p50_seconds gauge
provider_latency_p50_seconds{provider="openai"} 0.25
# HELP provider_latency_p95_seconds p95 provider latency over the sliding window.
# TYPE provider_latency_p95_seconds gauge
provider_latency_p95_seconds{provider="openai"} 0.7464100874755201
# HELP provider_latency_p99_seconds p99 provider latency over the sliding window.
# TYPE provider_latency_p99_seconds gauge
provider_latency_p99_seconds{provider="openai"} 0.7464100874755201
# HELP provider_request_duration_seconds AI provider request latency since start.
# TYPE provider_request_duration_seconds histogram
provider_request_duration_seconds_bucket{le="0.005",provider="openai"} 0.0
provider_request_duration_seconds_bucket{le="0.01",provider="openai"} 0.0
provider_request_duration_seconds_bucket{le="0.025",provider="openai"} 0.0
provider_request_duration_seconds_bucket{le="0.05",provider="openai"} 0.0
provider_request_duration_seconds_bucket{le="0.1",provider="openai"} 0.0
provider_request_duration_seconds_bucket{le="0.25",provider="openai"} 1.0
provider_request_duration_seconds_bucket{le="0.5",provider="openai"} 1.0
provider_request_duration_seconds_bucket{le="1.0",provider="openai"} 2.0
provider_request_duration_seconds_bucket{le="2.5",provider="openai"} 2.0
provider_request_duration_seconds_bucket{le="5.0",provider="openai"} 2.0
provider_request_duration_seconds_bucket{le="10.0",provider="openai"} 2.0
provider_request_duration_seconds_bucket{le="30.0",provider="openai"} 2.0
provider_request_duration_seconds_bucket{le="60.0",provider="openai"} 2.0
provider_request_duration_seconds_bucket{le="120.0",provider="openai"} 2.0
provider_request_duration_seconds_bucket{le="300.0",provider="openai"} 2.0
provider_request_duration_seconds_bucket{le="600.0",provider="openai"} 2.0
provider_request_duration_seconds_bucket{le="+Inf",provider="openai"} 2.0
provider_request_duration_seconds_count{provider="openai"} 2.0
provider_request_duration_seconds_sum{provider="openai"} 1.0
# HELP model_requests_total Requests for the AI model.
# TYPE model_requests_total counter
model_requests_total{model="gpt-4"} 2.0
# HELP model_errors_total Failed requests for the AI model.
# TYPE model_errors_total counter
model_errors_total{model="gpt-4"} 1.0
# HELP model_error_rate Share of the model's requests that failed over the sliding window (0-1).
# TYPE model_error_rate gauge
model_error_rate{model="gpt-4"} 0.5
# HELP model_latency_avg_seconds Average model latency over the sliding window.
# TYPE model_latency_avg_seconds gauge
model_latency_avg_seconds{model="gpt-4"} 0.5
# HELP model_latency_min_seconds Smallest model latency over the sliding window.
# TYPE model_latency_min_seconds gauge
model_latency_min_seconds{model="gpt-4"} 0.25
# HELP model_latency_max_seconds Largest model latency over the sliding window.
# TYPE model_latency_max_seconds gauge
model_latency_max_seconds{model="gpt-4"} 0.75
# HELP model_latency_p50_seconds p50 model latency over the sliding window.
# TYPE model_latency_p50_seconds gauge
model_latency_p50_seconds{model="gpt-4"} 0.25
# HELP model_latency_p95_seconds p95 model latency over the sliding window.
# TYPE model_latency_p95_seconds gauge
model_latency_p95_seconds{model="gpt-4"} 0.7464100874755201
# HELP model_latency_p99_seconds p99 model latency over the sliding window.
# TYPE model_latency_p99_seconds gauge
model_latency_p99_seconds{model="gpt-4"} 0.7464100874755201
# HELP cache_hits_total Cache lookups that found their entry.
# TYPE cache_hits_total counter
cache_hits_total 3.0
# HELP cache_misses_total Cache lookups that did not find their entry.
# TYPE cache_misses_total counter
cache_misses_total 1.0
# HELP cache_hit_rate Share of cache lookups that hit over the sliding window (0-1).
# TYPE cache_hit_rate gauge
cache_hit_rate 0.75
# HELP db_queries_total Database queries.
# TYPE db_queries_total counter
db_queries_total 1.0
# HELP db_query_latency_avg_seconds Average database query latency over the sliding window.
# TYPE db_query_latency_avg_seconds gauge
db_query_latency_avg_seconds 0.5
# HELP db_query_latency_min_seconds Smallest database query latency, sliding window.
# TYPE db_query_latency_min_seconds gauge
db_query_latency_min_seconds 0.5
# HELP db_query_latency_max_seconds Largest database query latency, sliding window.
# TYPE db_query_latency_max_seconds gauge
db_query_latency_max_seconds 0.5
# HELP external_api_calls_total Calls to external APIs.
# TYPE external_api_calls_total counter
external_api_calls_total{service="stripe"} 1.0
# HELP external_api_errors_total Failed calls to external APIs.
# TYPE external_api_errors_total counter
external_api_errors_total{service="stripe"} 1.0
# HELP llm_tokens_total LLM tokens, by direction (input, output, cached_input).
# TYPE llm_tokens_total counter
# HELP llm_request_tokens Tokens per LLM call, by direction (buckets 1, 4, 16, ... 4^13).
# TYPE llm_request_tokens histogram
# HELP llm_cost_usd_total Cost of LLM calls in US dollars.
# TYPE llm_cost_usd_total counter
# HELP provider_errors_by_type_total Failed upstream calls by type: timeout, rate_limited, 4xx, 5xx, connection,\
 other.
# TYPE provider_errors_by_type_total counter
# HELP llm_provider_fallbacks_total Requests moved from one provider to another.
# TYPE llm_provider_fallbacks_total counter
# HELP llm_rate_limit_remaining Latest remaining rate limit reported by the provider (requests or tokens).
# TYPE llm_rate_limit_remaining gauge
# HELP llm_streams_total Streamed responses by outcome: completed, client_disconnect, error.
# TYPE llm_streams_total counter
# HELP llm_time_to_first_chunk_seconds Time from request start to the first streamed chunk.
# TYPE llm_time_to_first_chunk_seconds histogram
# HELP llm_stream_duration_seconds Time from request start to the end of the stream.
# TYPE llm_stream_duration_seconds histogram
# HELP http_requests_in_flight Requests being served now, summed over live workers.
# TYPE http_requests_in_flight gauge
http_requests_in_flight 0.0
# HELP gatewayz_build_info Version of flask_gatewayz_metrics and of Python (value 1).
# TYPE gatewayz_build_info gauge
gatewayz_build_info{python_version="@PYTHON_VERSION@",version="0.1.0"} 1.0
# HELP gatewayz_start_time_seconds Unix time the server (metrics directory) started.
# TYPE gatewayz_start_time_seconds gauge
gatewayz_start_time_seconds @START_TIME@
# HELP gatewayz_metrics_label_overflow_total Label values recorded as 'other' (the label was at its limit).
# TYPE gatewayz_metrics_label_overflow_total counter
# HELP gatewayz_uptime_seconds Seconds since the server (metrics directory) started.
# TYPE gatewayz_uptime_seconds gauge
gatewayz_uptime_seconds 10.0
# HELP gatewayz_metrics_dropped_total Metric inputs dropped as invalid or unrecordable, by reason.
# TYPE gatewayz_metrics_dropped_total counter
gatewayz_metrics_dropped_total{reason="internal_error"} 0.0
gatewayz_metrics_dropped_total{reason="invalid_label"} 0.0
gatewayz_metrics_dropped_total{reason="invalid_latency"} 1.0
gatewayz_metrics_dropped_total{reason="invalid_status"} 0.0
gatewayz_metrics_dropped_total{reason="invalid_value"} 0.0
gatewayz_metrics_dropped_total{reason="storage_unavailable"} 0.0
# HELP gatewayz_metrics_storage_errors_total Unreadable metrics files moved to quarantine/, by reason.
# TYPE gatewayz_metrics_storage_errors_total counter
gatewayz_metrics_storage_errors_total{reason="corrupt_header"} 0.0
gatewayz_metrics_storage_errors_total{reason="corrupt_record"} 0.0
gatewayz_metrics_storage_errors_total{reason="empty"} 0.0
gatewayz_metrics_storage_errors_total{reason="foreign"} 0.0
gatewayz_metrics_storage_errors_total{reason="truncated"} 0.0
gatewayz_metrics_storage_errors_total{reason="unreadable"} 0.0
gatewayz_metrics_storage_errors_total{reason="window_geometry"} 0.0
gatewayz_metrics_storage_errors_total{reason="wrong_version"} 0.0
# HELP gatewayz_metrics_worker_files Worker files merged into this scrape, by writer state.
# TYPE gatewayz_metrics_worker_files gauge
gatewayz_metrics_worker_files{state="live"} 1.0
gatewayz_metrics_worker_files{state="dead"} 0.0
# HELP gen_ai_client_token_usage Number of input and output tokens used.
# TYPE gen_ai_client_token_usage histogram
# HELP gen_ai_client_operation_duration_seconds GenAI operation duration (upstream calls).
# TYPE gen_ai_client_operation_duration_seconds histogram
# HELP gen_ai_server_request_duration_seconds Generative AI server request duration (the gateway's responses).
# TYPE gen_ai_server_request_duration_seconds histogram
gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="0.01"} 0.0
gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="0.02"} 0.0
gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="0.04"} 0.0
gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="0.08"} 0.0
gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="0.16"} 0.0
gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="0.32"} 1.0
gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="0.64"} 1.0
gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="1.28"} 1.0
gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="2.56"} 1.0
gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="5.12"} 1.0
gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="10.24"} 1.0
gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="20.48"} 1.0
gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="40.96"} 1.0
gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="81.92"} 1.0
gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="+Inf"} 1.0
gen_ai_server_request_duration_seconds_count{error_type="",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4"} 1.0
gen_ai_server_request_duration_seconds_sum{error_type="",gen_ai_operation_name="chat",gen_ai_provider_name="openai",\
gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4"} 0.25
gen_ai_server_request_duration_seconds_bucket{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="0.01"} 0.0
gen_ai_server_request_duration_seconds_bucket{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="0.02"} 0.0
gen_ai_server_request_duration_seconds_bucket{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="0.04"} 0.0
gen_ai_server_request_duration_seconds_bucket{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="0.08"} 0.0
gen_ai_server_request_duration_seconds_bucket{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="0.16"} 0.0
gen_ai_server_request_duration_seconds_bucket{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="0.32"} 0.0
gen_ai_server_request_duration_seconds_bucket{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="0.64"} 0.0
gen_ai_server_request_duration_seconds_bucket{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="1.28"} 1.0
gen_ai_server_request_duration_seconds_bucket{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="2.56"} 1.0
gen_ai_server_request_duration_seconds_bucket{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="5.12"} 1.0
gen_ai_server_request_duration_seconds_bucket{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="10.24"} 1.0
gen_ai_server_request_duration_seconds_bucket{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="20.48"} 1.0
gen_ai_server_request_duration_seconds_bucket{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="40.96"} 1.0
gen_ai_server_request_duration_seconds_bucket{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="81.92"} 1.0
gen_ai_server_request_duration_seconds_bucket{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4",le="+Inf"} 1.0
gen_ai_server_request_duration_seconds_count{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4"} 1.0
gen_ai_server_request_duration_seconds_sum{error_type="500",gen_ai_operation_name="chat",\
gen_ai_provider_name="openai",gen_ai_request_model="gpt-4",gen_ai_response_model="gpt-4"} 0.75
# HELP gen_ai_server_time_to_first_token_seconds Time to generate first token for successful responses.
# TYPE gen_ai_server_time_to_first_token_seconds histogram
# HELP gen_ai_server_time_per_output_token_seconds Time per output token generated after the first token for \
successful responses.
# TYPE gen_ai_server_time_per_output_token_seconds histogram
# HELP http_server_request_duration_seconds Duration of HTTP server requests.
# TYPE http_server_request_duration_seconds histogram
http_server_request_duration_seconds_bucket{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat",le="0.005"} 0.0
http_server_request_duration_seconds_bucket{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat",le="0.01"} 0.0
http_server_request_duration_seconds_bucket{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat",le="0.025"} 0.0
http_server_request_duration_seconds_bucket{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat",le="0.05"} 0.0
http_server_request_duration_seconds_bucket{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat",le="0.075"} 0.0
http_server_request_duration_seconds_bucket{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat",le="0.1"} 0.0
http_server_request_duration_seconds_bucket{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat",le="0.25"} 1.0
http_server_request_duration_seconds_bucket{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat",le="0.5"} 1.0
http_server_request_duration_seconds_bucket{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat",le="0.75"} 1.0
http_server_request_duration_seconds_bucket{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat",le="1.0"} 1.0
http_server_request_duration_seconds_bucket{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat",le="2.5"} 1.0
http_server_request_duration_seconds_bucket{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat",le="5.0"} 1.0
http_server_request_duration_seconds_bucket{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat",le="7.5"} 1.0
http_server_request_duration_seconds_bucket{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat",le="10.0"} 1.0
http_server_request_duration_seconds_bucket{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat",le="+Inf"} 1.0
http_server_request_duration_seconds_count{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat"} 1.0
http_server_request_duration_seconds_sum{error_type="",http_request_method="POST",http_response_status_code="200",\
http_route="/api/chat"} 0.25
http_server_request_duration_seconds_bucket{error_type="500",http_request_method="POST",\
http_response_status_code="500",http_route="/api/chat",le="0.005"} 0.0
http_server_request_duration_seconds_bucket{error_type="500",http_request_method="POST",\
http_response_status_code="500",http_route="/api/chat",le="0.01"} 0.0
http_server_request_duration_seconds_bucket{error_type="500",http_request_method="POST",\
http_response_status_code="500",http_route="/api/chat",le="0.025"} 0.0
http_server_request_duration_seconds_bucket{error_type="500",http_request_method="POST",\
http_response_status_code="500",http_route="/api/chat",le="0.05"} 0.0
http_server_request_duration_seconds_bucket{error_type="500",http_request_method="POST",\
http_response_status_code="500",http_route="/api/chat",le="0.075"} 0.0
http_server_request_duration_seconds_bucket{error_type="500",http_request_method="POST",\
http_response_status_code="500",http_route="/api/chat",le="0.1"} 0.0
http_server_request_duration_seconds_bucket{error_type="500",http_request_method="POST",\
http_response_status_code="500",http_route="/api/chat",le="0.25"} 0.0
http_server_request_duration_seconds_bucket{error_type="500",http_request_method="POST",\
http_response_status_code="500",http_route="/api/chat",le="0.5"} 0.0
http_server_request_duration_seconds_bucket{error_type="500",http_request_method="POST",\
http_response_status_code="500",http_route="/api/chat",le="0.75"} 1.0
http_server_request_duration_seconds_bucket{error_type="500",http_request_method="POST",\
http_response_status_code="500",http_route="/api/chat",le="1.0"} 1.0
http_server_request_duration_seconds_bucket{error_type="500",http_request_method="POST",\
http_response_status_code="500",http_route="/api/chat",le="2.5"} 1.0
http_server_request_duration_seconds_bucket{error_type="500",http_request_method="POST",\
http_response_status_code="500",http_route="/api/chat",le="5.0"} 1.0
http_server_request_duration_seconds_bucket{error_type="500",http_request_method="POST",\
http_response_status_code="500",http_route="/api/chat",le="7.5"} 1.0
http_server_request_duration_seconds_bucket{error_type="500",http_request_method="POST",\
http_response_status_code="500",http_route="/api/chat",le="10.0"} 1.0
http_server_request_duration_seconds_bucket{error_type="500",http_request_method="POST",\
http_response_status_code="500",http_route="/api/chat",le="+Inf"} 1.0
http_server_request_duration_seconds_count{error_type="500",http_request_method="POST",\
http_response_status_code="500",http_route="/api/chat"} 1.0
http_server_request_duration_seconds_sum{error_type="500",http_request_method="POST",http_response_status_code="500",\
http_route="/api/chat"} 0.75
"""


def scenario(collector: MetricsCollector, clock) -> None:  # type: ignore[no-untyped-def]
    """The small scenario EXPECTED describes, recorded 10 s after the directory started."""
    clock.now = collector.snapshot().start_time + 10.0
    collector.record_request("/api/chat", "POST", 0.25, 200, provider="openai", model="gpt-4")
    collector.record_request("/api/chat", "POST", 0.75, 500, provider="openai", model="gpt-4")
    for _ in range(3):
        collector.record_cache_hit()
    collector.record_cache_miss()
    collector.record_db_query(0.5)
    collector.record_external_api_call("stripe", error=True)
    collector.record_request("/x", "GET", math.nan, 200)


def test_quantile_literals_are_sketch_representatives() -> None:
    """The percentile numbers in EXPECTED are the sketch's answers for 0.25 and 0.75."""
    assert float(P_025) == sketch.representative(sketch.bucket_index(0.25))
    assert float(P_025) < 0.25  # below the exact min: p50 is answered with the min
    assert float(P_075) == sketch.representative(sketch.bucket_index(0.75))
    assert abs(float(P_025) - 0.25) / 0.25 <= sketch.MAX_RELATIVE_ERROR * (1 + 1e-9)
    assert abs(float(P_075) - 0.75) / 0.75 <= sketch.MAX_RELATIVE_ERROR


def expected_text(collector: MetricsCollector) -> str:
    """EXPECTED with this machine's Python version and this directory's start time."""
    return EXPECTED.replace("@PYTHON_VERSION@", platform.python_version()).replace(
        "@START_TIME@", floatToGoString(collector.snapshot().start_time)
    )


def test_exact_text_exposition(collector: MetricsCollector, clock) -> None:  # type: ignore[no-untyped-def]
    """The 0.0.4 exposition of a small scenario is exactly the expected text."""
    scenario(collector, clock)
    assert PrometheusExporter(collector).export() == expected_text(collector)


def test_empty_exposition_has_every_family(collector: MetricsCollector, clock) -> None:  # type: ignore[no-untyped-def]
    """With nothing recorded every family still has HELP and TYPE; windowed gauges have no sample."""
    clock.now = collector.snapshot().start_time + 1.0
    text = PrometheusExporter(collector).export()
    families = {f.name: f for f in parse_text(text)}
    for name, kind in {**SPEC_FAMILIES, **OUR_FAMILIES}.items():
        base = name.removesuffix("_total") if kind == "counter" else name
        assert f"# HELP {name} " in text, name
        assert f"# TYPE {name} {kind}\n" in text, name
        assert families[base].type == kind, name
    assert families["cache_hits"].samples[0].value == 0
    assert families["cache_hit_rate"].samples == []
    assert families["gatewayz_uptime_seconds"].samples[0].value == 1.0


def test_every_family_has_help_and_type(collector: MetricsCollector, clock) -> None:  # type: ignore[no-untyped-def]
    """Each family of the spec (and ours) is announced once with HELP and TYPE, before its samples."""
    scenario(collector, clock)
    text = PrometheusExporter(collector).export()
    lines = text.splitlines()
    helps = [line.split()[2] for line in lines if line.startswith("# HELP ")]
    types = {line.split()[2]: line.split()[3] for line in lines if line.startswith("# TYPE ")}
    assert sorted(helps) == sorted(types) == sorted({**SPEC_FAMILIES, **OUR_FAMILIES})
    assert types == {**SPEC_FAMILIES, **OUR_FAMILIES}
    announced: set[str] = set()
    for line in lines:
        if line.startswith("# TYPE "):
            announced.add(line.split()[2])
        elif not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            assert any(name == f or name.startswith(f + "_") for f in announced), line


def test_default_content_type_is_text_004(collector: MetricsCollector, clock) -> None:  # type: ignore[no-untyped-def]
    """No (or a plain) Accept header gets text 0.0.4, identical to export()."""
    scenario(collector, clock)
    exporter = PrometheusExporter(collector)
    for accept in (None, "", "text/plain", "*/*"):
        body, content_type = exporter.render(accept)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
        assert body.decode("utf-8") == expected_text(collector)


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text",
        "application/openmetrics-text; version=1.0.0",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    ],
)
def test_openmetrics_when_asked(collector: MetricsCollector, clock, accept: str) -> None:  # type: ignore[no-untyped-def]
    """An OpenMetrics Accept header gets OpenMetrics, ending with # EOF, that its parser accepts."""
    scenario(collector, clock)
    body, content_type = PrometheusExporter(collector).render(accept)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0; charset=utf-8")
    text = body.decode("utf-8")
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["http_requests"].type == "counter"
    requests = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families["http_requests"].samples}
    assert requests[("http_requests_total", (("endpoint", "/api/chat"), ("method", "POST")))] == 2
    assert families["http_request_duration_seconds"].type == "histogram"
    assert families["cache_hit_rate"].samples[0].value == 0.75
    samples = families["gatewayz_metrics_dropped"].samples
    dropped = {s.labels["reason"]: s.value for s in samples if s.name.endswith("_total")}
    assert dropped["invalid_latency"] == 1
    assert dropped["internal_error"] == 0


def test_text_parses_back_to_the_recorded_values(collector: MetricsCollector, clock) -> None:  # type: ignore[no-untyped-def]
    """prometheus_client's 0.0.4 parser reads the scenario's values back."""
    scenario(collector, clock)
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in parse_text(PrometheusExporter(collector).export())
        for s in f.samples
    }
    assert values[("http_requests_total", (("endpoint", "/api/chat"), ("method", "POST")))] == 2
    assert values[("http_response_status_total", (("endpoint", "/api/chat"), ("status", "500")))] == 1
    assert values[("provider_latency_max_seconds", (("provider", "openai"),))] == 0.75
    assert values[("http_request_duration_seconds_bucket", (("endpoint", "/api/chat"), ("le", "+Inf"),
                                                            ("method", "POST")))] == 2
    assert values[("gatewayz_uptime_seconds", ())] == 10.0
    assert values[("gatewayz_metrics_worker_files", (("state", "live"),))] == 1
