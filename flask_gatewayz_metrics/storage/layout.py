"""Byte layout of the files in the metrics directory.

Worker file (``worker-<pid>-<nonce>.gwzm``), little-endian, written by one process::

    offset  size  field
    0       4     magic b"GWZW"
    4       4     format version (u32)
    8       8     used: bytes of the file holding complete records (u64)
    16      8     reset epoch the data belongs to (u64)
    24      8     pid of the writer (u64, informational only)
    32      8     creation time, Unix seconds (f64)
    40      8     slot width of windowed records in seconds, 0 = one slot since start (f64)
    48      8     slots per windowed record (u64)
    56      8     reserved
    64      ...   records, each 8-byte aligned

Record::

    u32 record length in bytes (header + key + padding + payload)
    u32 key length in bytes
    key: UTF-8 JSON array [kind, label values...], zero-padded to 8 bytes
         (empty: a bucket block, see below)
    payload: float64 values, layout given by the kind (see ``KINDS``)

A record is written completely before ``used`` is advanced past it, so a reader that
honours ``used`` never sees a half-written record. ``used`` is one aligned 8-byte store.

Windowed payloads are ``slots`` consecutive slots of ``SLOT_HEADER`` fields (id, count,
sum, errors, min, max), followed for kinds with a sketch by one more field,
``SLOT_BLOCK``: the float64 index in the file of the payload of the slot's first bucket
block (0 = none yet). A slot holds the observations of one clock-aligned interval
``[id * width, (id + 1) * width)`` and lives at position ``id % slots``.

Sketch buckets are stored sparsely, only those a slot has touched, in *bucket blocks*:
records with an empty key (key length 0), appended like any other record when a slot
touches a bucket and its blocks are full. A block's payload::

    BLOCK_USED  entries published (float64 integer, 0 .. capacity)
    BLOCK_NEXT  float64 index of the next block's payload of the same slot (0 = none);
                always larger than this block's own index (blocks are appended)
    capacity x  entry: one float64, bucket index * ENTRY_UNIT (2**42) + count (format 4;
                format 3 had two float64 per entry); the bucket index is 0 ..
                sketch.BUCKET_COUNT - 1 (< 2**11, see ``sketch``), the count 0 ..
                2**42 - 1, so an entry is an integer below 2**53: adding 1.0 to it adds
                one to its count, exactly (the request path's only write to a known bucket)

The capacity follows from the record length (1 .. ``MAX_ARCHIVE_BLOCK_ENTRIES``). The
writer fills an entry (its bucket, count 1) before it raises ``BLOCK_USED`` past it, and
writes a new block completely (``used`` moved past it) before it links it from
``SLOT_BLOCK`` or ``BLOCK_NEXT``: every store that publishes is one aligned 8-byte
store, so readers see a shorter chain or fewer entries, never a half-written one. A
writer's chain for one slot starts with a block of ``FIRST_BLOCK_ENTRIES`` for a new
series, or, for a slot position the series has not used yet, of the entries of its
busiest other position plus 2 (``slots.first_block_capacity``: intervals of a series
touch similar numbers of buckets); further blocks double from 8 up to
``MAX_BLOCK_ENTRIES``. When the slot position moves to a new interval its blocks are
kept and emptied (``BLOCK_USED`` = 0), so a file stops growing once each slot
position has held its busiest interval. The archive writes one block per non-empty
slot, of exactly the capacity it needs (a count above ``MAX_ENTRY_COUNT`` takes several
entries of its bucket, which readers add; more than ``MAX_ARCHIVE_BLOCK_ENTRIES``
entries take several linked blocks). Readers follow a chain only through blocks they
indexed, strictly forward, within the mapping, and take a slot's entries only when
every one is finite and >= 0 with a valid bucket index (so its count is finite, >= 0
and below 2**42; a fractional count, which no writer makes, is taken as it is, as in
format 3); anything else makes the slot unusable.

Growth: a worker file starts at 16 KiB and doubles up to 256 KiB, then grows by an
eighth of the power of two below its size (``worker_file.grown_size``), space reserved
with ``posix_fallocate`` first; so its size stays within 1/8 of its ``used`` bytes.

Configurable latency buckets (``GATEWAYZ_METRICS_BUCKETS``): the since-start latency
histograms (``BOUNDED_KINDS``) with the default ``HISTOGRAM_BOUNDS`` are stored under
their kind names; other bounds as the kinds ``<kind>_le<n>`` (``n`` finite bounds:
count, sum, ``n + 1`` buckets) whose first label, ``bounds``, is ``bounds_fingerprint``
of the bound set, so two bound sets never share a series (a reader keeps its own:
``merge.select_bounds``). The header's reserved word stays unused.

Native histograms (since start, for the protobuf exposition, see ``native_histograms``)
are records of the kinds ``request_native`` {endpoint, method}, ``provider_native``
{provider}, ``first_chunk_native`` and ``stream_duration_native`` {provider, model}
(``NATIVE_KINDS``), merged as "native". Their payload is one float64, ``NATIVE_FIRST``:
the index of the payload of the record's first bucket block (0 = none yet). The
blocks are the bucket blocks above, with the same publication rules, but a native
chain is never emptied (only a reset, which starts a new file, clears it): its
entries are the sketch bucket indexes (``sketch.bucket_index``) the series has seen
since start, each with its count (``native_histograms`` maps them to schema-5
buckets). The archive writes one block per native series, of exactly the capacity it
needs. Readers take a chain only under the same checks as a slot's; a damaged one
drops the series.

Control file (``control.gwzc``), shared by all processes::

    0   4  magic b"GWZC"   4  version (u32)
    8   8  reset epoch (u64), bumped under an exclusive flock of the file
    16  8  start time of the server, Unix seconds (f64)
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Doubles = memoryview[float]
else:
    Doubles = memoryview
"""A file (or part of one) viewed as float64 values."""

VERSION = 4
"""Bumped when record payloads change (2: wider sketch, model sketch, min / max in every
slot; 3: sparse sketch buckets in bucket blocks; 4: one float64 per block entry, and the
native kinds). Readers skip a file of any other version (``wrong_version``)."""
WORKER_MAGIC = b"GWZW"
CONTROL_MAGIC = b"GWZC"
WORKER_SUFFIX = ".gwzm"
CONTROL_NAME = "control.gwzc"
ARCHIVE_NAME = "archive.gwza"
"""Merged records of dead workers (same layout as a worker file), see ``archive``."""
COMPACTION_LOCK_NAME = "compaction.lock"
QUARANTINE_DIR = "quarantine"
TEMP_PREFIX = "."
"""Files being created start with a dot and are renamed when complete; readers skip them."""

HEADER_SIZE = 64
HEADER = struct.Struct("<4sIQQQddQ8x")
"""magic, version, used, epoch, pid, created, slot_seconds, slots."""
USED_INDEX = 1
"""Index of ``used`` when the file is viewed as an array of u64."""
CREATED_INDEX = 4
"""Index of the creation time when the file is viewed as an array of float64."""

CONTROL_SIZE = 64
CONTROL = struct.Struct("<4sIQd")
CONTROL_EPOCH_INDEX = 1
CONTROL_START_INDEX = 2

RECORD_HEADER = struct.Struct("<II")
MAX_VALUE = 2.0**53
"""Largest magnitude a stored value may reach (float64 counts are exact up to here). A
reader drops a series beyond it as damaged; so a writer refuses (drops and counts) any
write that would carry a value past it, rather than let one absurd input hide a
series' earlier counts."""
MAX_SECONDS = 2.0**20
"""Longest latency or duration accepted (about 12 days); longer ones are dropped as
invalid. It keeps latency sums far below ``MAX_VALUE`` (8.6e9 requests at the bound)."""
MAX_KEY_BYTES = 4096

HISTOGRAM_BOUNDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)
"""Upper bounds of the since-start latency histograms (the last bucket is +Inf).

From 5 ms (a cache hit) to 600 s, the usual time-out of an LLM call."""

TOKEN_BOUNDS: tuple[float, ...] = tuple(float(4**i) for i in range(14))
"""Upper bounds of the tokens-per-request histogram: 1, 4, 16, ... 67108864 (OpenTelemetry
GenAI's gen_ai.client.token.usage buckets)."""
TOKENS_SIZE = 1 + len(TOKEN_BOUNDS) + 1
"""Payload of a "tokens" record: token sum, then one count per bucket (+Inf last)."""

# Bucket bounds the OpenTelemetry semantic conventions recommend (ExplicitBucketBoundaries)
# for the histograms of ``semconv``; each payload is the value sum, then one count per
# bucket (+Inf last), the count being their sum (http_server_buckets: the counts only).
# gen_ai.client.token.usage uses TOKEN_BOUNDS, which are the conventions' own.
HTTP_SERVER_BOUNDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
"""http.server.request.duration (stable)."""
GEN_AI_DURATION_BOUNDS: tuple[float, ...] = tuple(0.01 * 2**i for i in range(14))
"""gen_ai.client.operation.duration and gen_ai.server.request.duration: 0.01, 0.02, ... 81.92."""
GEN_AI_FIRST_TOKEN_BOUNDS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
"""gen_ai.server.time_to_first_token."""
GEN_AI_PER_TOKEN_BOUNDS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)
"""gen_ai.server.time_per_output_token."""

DEFAULT_WINDOW_SECONDS = 300.0
DEFAULT_WINDOW_SLOTS = 5
"""The default window (``Settings.window_seconds`` / ``window_slots`` take these): kept
here, the lowest layer, so that the archive's fallback geometry is the same numbers."""

# Slot header fields of windowed records. Sketch slots leave SLOT_COUNT at 0 (the
# count is the sum of their buckets); every slot tracks the exact min / max of the
# values it saw (the cache window's values are all 0).
SLOT_ID, SLOT_COUNT, SLOT_SUM, SLOT_ERRORS, SLOT_MIN, SLOT_MAX = range(6)
SLOT_HEADER = 6
EMPTY_SLOT: tuple[float, ...] = (-1.0, 0.0, 0.0, 0.0, float("inf"), float("-inf"))
SLOT_BLOCK = SLOT_HEADER
"""Sketch slots only: float64 index of the payload of the slot's first bucket block."""

# Bucket blocks (records with an empty key): used entries, next block, then entries.
BLOCK_USED, BLOCK_NEXT, BLOCK_ENTRIES = range(3)
FIRST_BLOCK_ENTRIES = 4
MAX_BLOCK_ENTRIES = 64
"""Largest capacity a writer gives a block (the archive's may reach ``MAX_ARCHIVE_BLOCK_ENTRIES``)."""
MAX_ARCHIVE_BLOCK_ENTRIES = 2048
"""Largest capacity of any block a reader accepts (not below ``sketch.BUCKET_COUNT``: an
archive block holds a whole slot or chain, one entry per bucket; a chain needing more
entries, for counts split over several, gets several blocks)."""
ENTRY_UNIT = 2.0**42
"""A block entry is one float64, ``bucket index * ENTRY_UNIT + count`` (format 4): the
index (below ``sketch.BUCKET_COUNT`` < 2**11) in the high bits, the count below
``ENTRY_UNIT``; the whole stays an integer below 2**53, so adding 1.0 to an entry adds
one to its count, exactly."""
MAX_ENTRY_COUNT = ENTRY_UNIT - 1.0
"""Largest count one entry holds (a larger one is written as several entries of the
same bucket, which readers add)."""


def pack_entry(index: int, count: float) -> float:
    """One block entry: sketch bucket ``index`` with ``count`` (integral, 0 .. MAX_ENTRY_COUNT)."""
    return index * ENTRY_UNIT + count


# Payload of "request" and "provider" records: count, latency sum, histogram buckets.
REQ_COUNT, REQ_SUM, REQ_BUCKETS = range(3)
REQUEST_SIZE = REQ_BUCKETS + len(HISTOGRAM_BOUNDS) + 1


@dataclass(frozen=True)
class Kind:
    """What a record kind holds: label names, and a fixed or windowed payload."""

    labels: tuple[str, ...]
    size: int = 0
    """Fixed payload size in float64 values (0 for windowed kinds)."""
    windowed: bool = False
    with_sketch: bool = False
    merge: str = "sum"
    """How workers combine: "sum"; "latest" (the payload whose last value, a
    timestamp, is newest wins); "live" (summed over live workers only, never archived);
    "max" / "min" (payload ``(value, set)``: the largest / smallest value among the
    payloads whose ``set`` flag is non-zero); "native" (a pointer to a bucket-block
    chain whose entries add, see ``NATIVE_KINDS``)."""

    def payload_size(self, slots: int) -> int:
        """float64 values of this kind's payload in a file with ``slots`` window slots."""
        if not self.windowed:
            return self.size
        return slots * slot_stride(self.with_sketch)


def slot_stride(with_sketch: bool) -> int:
    """float64 values per slot of a windowed record in a file."""
    return SLOT_HEADER + (1 if with_sketch else 0)


def block_capacity(position: int) -> int:
    """Entries of the ``position``-th block (0 = first) of a writer's chain."""
    return min(FIRST_BLOCK_ENTRIES << min(position, 16), MAX_BLOCK_ENTRIES)


def block_payload(capacity: int) -> list[float]:
    """An empty bucket block of ``capacity`` entries."""
    return [0.0] * (BLOCK_ENTRIES + capacity)


MAX_SIZED_BLOCK_ENTRIES = 512
"""Largest capacity a writer gives a chain's first block when it sizes it from the
busiest other slot position of the series (``slots.first_block_capacity``)."""
_DOUBLE = struct.Struct("<d")


def stored_capacity(doubles: Doubles, block: int) -> int:
    """Capacity of the bucket block whose payload is at float64 index ``block``, read
    from its record header (the 8 bytes before the payload, as ``RECORD_HEADER``). For
    a writer's own file only: readers take capacities from their own index."""
    length: int = RECORD_HEADER.unpack(_DOUBLE.pack(doubles[block - 1]))[0]
    return (length - RECORD_HEADER.size) // 8 - BLOCK_ENTRIES


def header_slots(doubles: Doubles) -> int:
    """The header's slots per windowed record (``HEADER``) of a writer's own file."""
    return int(struct.unpack("<Q", _DOUBLE.pack(doubles[6]))[0])


OUTCOME_LABELS = ("status", "failed")
"""Each request-like record is kept per status code and per "failed" ("1" when the code
raised): error counts (status >= threshold or failed) and per-status totals are sums
of these records at read time, so recording never decides what an error is."""

KINDS: dict[str, Kind] = {
    "request": Kind(("endpoint", "method", *OUTCOME_LABELS), REQUEST_SIZE),
    "provider": Kind(("provider", *OUTCOME_LABELS), REQUEST_SIZE),
    "model": Kind(("model", *OUTCOME_LABELS), 1),
    "endpoint_window": Kind(("endpoint",), windowed=True, with_sketch=True),
    "provider_window": Kind(("provider",), windowed=True, with_sketch=True),
    "model_window": Kind(("model",), windowed=True, with_sketch=True),
    "cache": Kind((), 2),  # hits, misses
    "cache_window": Kind((), windowed=True),  # count = lookups, errors = misses
    "db": Kind((), 2),  # queries, latency sum
    "db_window": Kind((), windowed=True),
    "external": Kind(("service",), 2),  # calls, errors
    "dropped": Kind(("reason",), 1),
    # Beyond the spec: what AI gateway operators ask for.
    "in_flight": Kind((), 1, merge="live"),
    "tokens": Kind(("provider", "model", "direction"), TOKENS_SIZE),  # token sum, per-request buckets
    "cost": Kind(("provider", "model"), 1),
    "provider_error_type": Kind(("provider", "error_type"), 1),
    "fallback": Kind(("from_provider", "to_provider"), 1),
    "rate_limit": Kind(("provider", "limit"), 2, merge="latest"),  # remaining, time set
    "label_overflow": Kind(("label",), 1),
    "stream": Kind(("provider", "model", "outcome"), 1),
    "first_chunk": Kind(("provider", "model"), REQUEST_SIZE),  # count, sum, latency buckets
    "stream_duration": Kind(("provider", "model"), REQUEST_SIZE),
    # Latest trace id seen per latency bucket: four 32-bit parts, value, time set.
    "exemplar": Kind(("endpoint", "method", "bucket"), 6, merge="latest"),
    # OpenTelemetry semantic conventions' histograms (``semconv``): sum, then buckets.
    # Buckets only, one record per "request" record (same labels), which has count and sum.
    "http_server_buckets": Kind(("endpoint", "method", *OUTCOME_LABELS), len(HTTP_SERVER_BOUNDS) + 1),
    "gen_ai_client_duration": Kind(("operation", "provider", "model", "error_type"), len(GEN_AI_DURATION_BOUNDS) + 2),
    "gen_ai_server_duration": Kind(("operation", "provider", "model", "error_type"), len(GEN_AI_DURATION_BOUNDS) + 2),
    "gen_ai_first_token": Kind(("operation", "provider", "model"), len(GEN_AI_FIRST_TOKEN_BOUNDS) + 2),
    "gen_ai_per_output_token": Kind(("operation", "provider", "model"), len(GEN_AI_PER_TOKEN_BOUNDS) + 2),
    # Tenants (``tenants``): labels team, api_key (hashed or an alias), user; "" = not given.
    "tenant_request": Kind(("team", "api_key", "user", "status_class"), 2),  # requests, errors
    "tenant_tokens": Kind(("team", "api_key", "user", "direction"), 1),
    "tenant_cost": Kind(("team", "api_key", "user"), 1),
    "budget": Kind(("team",), 2, merge="latest"),  # remaining USD, time set
    # Archive only: worker files folded into it, and bad files the compactor quarantined.
    "absorbed": Kind(("file",), 0),
    "storage_errors": Kind(("reason",), 1),
    # The application's own metrics (``custom``). "labels" is the JSON array of the label
    # values; "custom_meta" describes a metric (kind: the storage kind of its series,
    # labelnames: a JSON array), its payload is the time it was defined (newest wins).
    "custom_meta": Kind(("name", "kind", "documentation", "labelnames"), 1, merge="latest"),
    "custom_counter": Kind(("name", "labels"), 1),
    "custom_gauge_sum": Kind(("name", "labels"), 1),
    "custom_gauge_livesum": Kind(("name", "labels"), 1, merge="live"),
    "custom_gauge_max": Kind(("name", "labels"), 2, merge="max"),  # value, set
    "custom_gauge_min": Kind(("name", "labels"), 2, merge="min"),  # value, set
    "custom_gauge_latest": Kind(("name", "labels"), 2, merge="latest"),  # value, time set
    # Native histograms (protobuf scrape): the first bucket block of a since-start chain.
    "request_native": Kind(("endpoint", "method"), 1, merge="native"),
    "provider_native": Kind(("provider",), 1, merge="native"),
    "first_chunk_native": Kind(("provider", "model"), 1, merge="native"),
    "stream_duration_native": Kind(("provider", "model"), 1, merge="native"),
}

# Payload fields of the fixed-size kinds, by name: code above storage/ reads a record through
# these, never a bare index (request-like kinds: REQ_* above; native kinds: NATIVE_FIRST below).
VALUE, SET = 0, -1
"""VALUE: the first value, the whole payload of one-value kinds and the value of "latest" /
"max" / "min" kinds; SET: their last value, the time set or the set flag (``Kind.merge``)."""
CACHE_HITS, CACHE_MISSES = range(2)
DB_QUERIES, DB_LATENCY_SUM = range(2)
EXTERNAL_CALLS, EXTERNAL_ERRORS = range(2)
TENANT_REQUESTS, TENANT_ERRORS = range(2)
RATE_LIMIT_REMAINING, RATE_LIMIT_SET = range(2)
BUDGET_REMAINING, BUDGET_SET = range(2)
GAUGE_VALUE, GAUGE_SET = range(2)  # custom gauges kept by "max" / "min" / "latest"
TOKENS_SUM, TOKENS_BUCKETS = range(2)  # then the buckets of TOKEN_BOUNDS, +Inf last
EXEMPLAR_TRACE_PARTS, EXEMPLAR_VALUE, EXEMPLAR_SET = 4, 4, 5  # trace id as four 32-bit parts, value, time
HISTOGRAM_SUM, HISTOGRAM_BUCKETS = range(2)
"""gen_ai_* and custom histograms: value sum, then one count per bucket (+Inf last);
``http_server_buckets`` holds the counts only, from index 0."""
NATIVE_FIRST = 0
"""Payload index of a native record's first block pointer."""
NATIVE_KINDS: dict[str, str] = {
    "request_native": "http_request_duration_seconds",
    "provider_native": "provider_request_duration_seconds",
    "first_chunk_native": "llm_time_to_first_chunk_seconds",
    "stream_duration_native": "llm_stream_duration_seconds",
}
"""Native record kind -> the histogram family that carries its buckets."""

MAX_HISTOGRAM_BUCKETS = 64
"""Most finite bounds ``GATEWAYZ_METRICS_BUCKETS`` may give."""
BOUNDED_KINDS: tuple[str, ...] = ("request", "provider", "first_chunk", "stream_duration")
"""Kinds whose payload is count, sum and the latency buckets of ``HISTOGRAM_BOUNDS`` (or
of the configured bounds: ``histogram_kind``)."""
# "<kind>_le<n>": the same payload with n configured finite bounds, labels prefixed by
# "bounds" (the bound set's fingerprint).
KINDS.update({
    f"{name}_le{n}": Kind(("bounds", *KINDS[name].labels), REQ_BUCKETS + n + 1)
    for name in BOUNDED_KINDS
    for n in range(1, MAX_HISTOGRAM_BUCKETS + 1)
})
REQUEST_KINDS = frozenset(kind for kind in KINDS if kind == "request" or kind.startswith("request_le"))
"""The kinds holding HTTP requests, whatever their bucket bounds."""


def bounds_fingerprint(bounds: Sequence[float]) -> str:
    """A short, stable name of a bound set (the ``bounds`` label of ``<kind>_le<n>``)."""
    text = ",".join(repr(float(b)) for b in bounds)
    return hashlib.blake2b(text.encode("ascii"), digest_size=8).hexdigest()


def histogram_kind(kind: str, bounds: Sequence[float]) -> tuple[str, tuple[str, ...]]:
    """The kind a collector with latency ``bounds`` records ``kind`` (one of
    ``BOUNDED_KINDS``) as, and the label values that go before the kind's own."""
    if tuple(bounds) == HISTOGRAM_BOUNDS:
        return kind, ()
    return f"{kind}_le{len(bounds)}", (bounds_fingerprint(bounds),)


MAX_CUSTOM_BUCKETS = 64
"""Most finite bucket bounds of a custom histogram."""
CUSTOM_HISTOGRAM_PREFIX = "custom_histogram_"
# One kind per bucket count, so the reader knows a record's payload size from its key:
# "custom_histogram_<n>" holds the sum, then n + 1 bucket counts (+Inf last); "bounds"
# is the comma-separated finite upper bounds.
KINDS.update({
    f"{CUSTOM_HISTOGRAM_PREFIX}{n}": Kind(("name", "bounds", "labels"), n + 2)
    for n in range(1, MAX_CUSTOM_BUCKETS + 1)
})


def padded(n: int) -> int:
    """``n`` rounded up to a multiple of 8."""
    return (n + 7) & ~7


def encode_key(kind: str, labels: Sequence[str]) -> bytes:
    """A record's key: the UTF-8 JSON array ``[kind, label values...]``."""
    # No spaces after the separators (format 4): a key is padded to 8 bytes, so the
    # 4 to 6 spaces of a 4-label key often cost a whole 8 more per record.
    return json.dumps([kind, *labels], ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def encode_record(key: bytes, payload: Sequence[float]) -> bytes:
    """One complete record: header, key padded to 8 bytes, float64 payload."""
    key_space = padded(len(key))
    length = RECORD_HEADER.size + key_space + 8 * len(payload)
    return b"".join((
        RECORD_HEADER.pack(length, len(key)),
        key.ljust(key_space, b"\0"),
        struct.pack(f"<{len(payload)}d", *payload),
    ))


def empty_payload(kind: Kind, slots: int) -> list[float]:
    """Initial payload of a new record: zeros, windowed slots marked unused."""
    if not kind.windowed:
        return [0.0] * kind.size
    slot = list(EMPTY_SLOT) + [0.0] * (slot_stride(kind.with_sketch) - SLOT_HEADER)
    return slot * slots


BLOCK_KEY = b""
"""Key of a bucket block record (no key: no JSON, no kind)."""
