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
    payload: float64 values, layout given by the kind (see ``kinds.KINDS``)

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
    capacity x  entry: one u32, count * ENTRY_ONE (2**11) + bucket index (format 6;
                format 4 and 5 had one float64, format 3 two, per entry); the bucket
                index is 0 .. sketch.BUCKET_COUNT - 1 (< 2**11, see ``sketch``), the
                count 0 .. 2**21 - 1. Adding ENTRY_ONE to an entry adds one to its
                count (the request path's only write to a known bucket, through a u32
                view of the file: ``WorkerFile.entry_words``); a count at its maximum
                cannot carry into the index: the u32 store refuses the value, and the
                writer starts another entry of the same bucket, which readers add.
                A block holds an even number of entries (the record stays 8-byte aligned).

The capacity follows from the record length (2 .. ``MAX_ARCHIVE_BLOCK_ENTRIES``). The
writer fills an entry (its bucket, count 1) before it raises ``BLOCK_USED`` past it, and
writes a new block completely (``used`` moved past it) before it links it from
``SLOT_BLOCK`` or ``BLOCK_NEXT``: every store that publishes is one aligned 8-byte
store, and every count a reader sees one aligned 4-byte store, so readers see a shorter
chain or fewer entries, never a half-written one. A
writer's chain for one slot starts with a block of ``FIRST_BLOCK_ENTRIES`` for a new
series, or, for a slot position the series has not used yet, of the entries of its
busiest other position plus 2 (``slots.first_block_capacity``: intervals of a series
touch similar numbers of buckets); a further block holds what the rest of the interval
is likely to touch at the pace so far (``slots.paced_block_capacity``, format 5), up to
``MAX_BLOCK_ENTRIES``; a native chain's double from 8. When the slot position moves to a new interval its blocks are
kept and emptied (``BLOCK_USED`` = 0), so a file stops growing once each slot
position has held its busiest interval. The archive writes one block per non-empty
slot, of exactly the capacity it needs (a count above ``MAX_ENTRY_COUNT`` takes several
entries of its bucket, which readers add; more than ``MAX_ARCHIVE_BLOCK_ENTRIES``
entries take several linked blocks). Readers follow a chain only through blocks they
indexed, strictly forward, within the mapping, and take a slot's entries only when
every one has a valid bucket index (its count is an integer below 2**21 by
construction); anything else makes the slot unusable.

Growth: a worker file starts at 16 KiB and doubles up to 256 KiB, then grows by an
eighth of the power of two below its size (``worker_file.grown_size``), space reserved
with ``posix_fallocate`` first; so its size stays within 1/8 of its ``used`` bytes.

Configurable latency buckets (``GATEWAYZ_METRICS_BUCKETS``): the since-start latency
histograms (``kinds.BOUNDED_KINDS``) with the default ``kinds.HISTOGRAM_BOUNDS`` are stored under
their kind names; other bounds as the kinds ``<kind>_le<n>`` (``n`` stored finite bounds:
count, sum, ``n + 1`` buckets) whose first label, ``bounds``, is ``kinds.bounds_fingerprint``
of the configured bound set, so two bound sets never share a series (a reader keeps its own:
``merge.select_bounds``). "request" and "provider" records (``kinds.SERVER_KINDS``, format
5) store their buckets over the configured bounds and http.server.request.duration's
together (``kinds.stored_bounds``); readers sum them into either set. The header's
reserved word stays unused.

Native histograms (since start, for the protobuf exposition, see ``native_histograms``)
are records of the kinds ``request_native`` {endpoint, method}, ``provider_native``
{provider}, ``first_chunk_native`` and ``stream_duration_native`` {provider, model}
(``kinds.NATIVE_KINDS``), merged as "native". Their payload is one float64, ``kinds.NATIVE_FIRST``:
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

import json
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Doubles = memoryview[float]
    EntryWords = memoryview[int]
else:
    Doubles = EntryWords = memoryview
"""A file (or part of one) viewed as float64 values; ``EntryWords``: as u32 values."""

VERSION = 6
"""Bumped when record payloads change (2: wider sketch, model sketch, min / max in every
slot; 3: sparse sketch buckets in bucket blocks; 4: one float64 per block entry, and the
native kinds; 5: "request" and "provider" buckets over ``kinds.stored_bounds``, no
"http_server_buckets" records; 6: one u32 per block entry). Readers skip a file of any
other version (``wrong_version``)."""
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
ENTRY_INDEX_BITS = 11
"""A block entry is one u32, ``count << ENTRY_INDEX_BITS | bucket index`` (format 6): the
index (below ``sketch.BUCKET_COUNT`` < 2**11) in the low bits, the count above it."""
ENTRY_ONE = 1 << ENTRY_INDEX_BITS
"""What adding one to an entry's count adds to the entry."""
ENTRY_INDEX_MASK = ENTRY_ONE - 1
MAX_ENTRY_COUNT = (1 << (32 - ENTRY_INDEX_BITS)) - 1
"""Largest count one entry holds (2,097,151; a larger one is written as several entries
of the same bucket, which readers add)."""
ENTRIES_PER_DOUBLE = 2
"""Block entries per float64 of a block's payload (u32 entries)."""


def pack_entry(index: int, count: int) -> int:
    """One block entry: sketch bucket ``index`` with ``count`` (0 .. MAX_ENTRY_COUNT)."""
    return count << ENTRY_INDEX_BITS | index


def first_entry(block: int) -> int:
    """Index, in the file viewed as u32 (``WorkerFile.entry_words``), of the first entry
    of the bucket block whose payload is at float64 index ``block``."""
    return ENTRIES_PER_DOUBLE * (block + BLOCK_ENTRIES)


def slot_stride(with_sketch: bool) -> int:
    """float64 values per slot of a windowed record in a file."""
    return SLOT_HEADER + (1 if with_sketch else 0)


def block_capacity(position: int) -> int:
    """Entries of the ``position``-th block (0 = first) of a writer's chain when no pace
    sizes it (a native chain, a window of one slot since start: ``slots.paced_block_capacity``)."""
    return min(FIRST_BLOCK_ENTRIES << min(position, 16), MAX_BLOCK_ENTRIES)


def even_capacity(entries: int) -> int:
    """``entries`` rounded up to a block's capacity (an even number: u32 entries fill
    whole float64 words)."""
    return entries + (entries & 1)


def block_payload(capacity: int) -> list[float]:
    """An empty bucket block of ``capacity`` entries (rounded up: ``even_capacity``)."""
    return [0.0] * (BLOCK_ENTRIES + (capacity + 1) // ENTRIES_PER_DOUBLE)


MAX_SIZED_BLOCK_ENTRIES = 512
"""Largest capacity a writer gives a chain's first block when it sizes it from the
busiest other slot position of the series (``slots.first_block_capacity``)."""
_DOUBLE = struct.Struct("<d")


def stored_capacity(doubles: Doubles, block: int) -> int:
    """Capacity of the bucket block whose payload is at float64 index ``block``, read
    from its record header (the 8 bytes before the payload, as ``RECORD_HEADER``). For
    a writer's own file only: readers take capacities from their own index."""
    length: int = RECORD_HEADER.unpack(_DOUBLE.pack(doubles[block - 1]))[0]
    return block_capacity_of_length(length)


def block_capacity_of_length(length: int) -> int:
    """Entries a bucket block record of ``length`` bytes holds (0 or less: not a block)."""
    return ((length - RECORD_HEADER.size) // 8 - BLOCK_ENTRIES) * ENTRIES_PER_DOUBLE


def header_slots(doubles: Doubles) -> int:
    """The header's slots per windowed record (``HEADER``) of a writer's own file."""
    return int(struct.unpack("<Q", _DOUBLE.pack(doubles[6]))[0])


def padded(n: int) -> int:
    """``n`` rounded up to a multiple of 8."""
    return (n + 7) & ~7


def encode_key(kind: str, labels: Sequence[str]) -> bytes:
    """A record's key: the UTF-8 JSON array ``[kind, label values...]``."""
    # No spaces after the separators (format 4): a key is padded to 8 bytes, so the
    # 4 to 6 spaces of a 4-label key often cost a whole 8 more per record.
    # Strict UTF-8: every reader decodes keys strictly, and one undecodable key makes the
    # whole file unreadable to them. A lone surrogate raises here (UnicodeEncodeError,
    # a ValueError) and only that record is lost.
    return json.dumps([kind, *labels], ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def encode_record(key: bytes, payload: Sequence[float]) -> bytes:
    """One complete record: header, key padded to 8 bytes, float64 payload."""
    key_space = padded(len(key))
    length = RECORD_HEADER.size + key_space + 8 * len(payload)
    return b"".join((
        RECORD_HEADER.pack(length, len(key)),
        key.ljust(key_space, b"\0"),
        struct.pack(f"<{len(payload)}d", *payload),
    ))


BLOCK_KEY = b""
"""Key of a bucket block record (no key: no JSON, no kind)."""
