"""Prometheus metrics of one broker, served on ``/metrics`` by the side HTTP server.

Counters and histograms are updated where the work happens; per-partition offsets are
read from the logs at scrape time, so they cost nothing between scrapes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("brook_requests", "Kafka protocol requests handled", ["api"], registry=REGISTRY)
REQUEST_ERRORS = Counter(
    "brook_request_errors",
    "Partition- or topic-level errors answered, by API and Kafka error name",
    ["api", "error"],
    registry=REGISTRY,
)
MALFORMED_REQUESTS = Counter(
    "brook_malformed_requests",
    "Request frames refused as malformed (connection closed), by API",
    ["api"],
    registry=REGISTRY,
)
REQUEST_LATENCY = Histogram(
    "brook_request_latency_seconds",
    "Time from a decoded request to its response body, by API",
    ["api"],
    buckets=(
        0.0001,
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
    ),
    registry=REGISTRY,
)
BYTES_IN = Counter(
    "brook_bytes_in", "Record batch bytes appended by producers", ["topic"], registry=REGISTRY
)
BYTES_OUT = Counter(
    "brook_bytes_out", "Record batch bytes sent to consumers", ["topic"], registry=REGISTRY
)
RECORDS_IN = Counter(
    "brook_records_in", "Records appended by producers", ["topic"], registry=REGISTRY
)
RECORDS_OUT = Counter(
    "brook_records_out", "Records sent to consumers", ["topic"], registry=REGISTRY
)
DUPLICATE_BATCHES = Counter(
    "brook_duplicate_batches",
    "Idempotent producers' retries answered with the original offsets, not appended again",
    ["topic"],
    registry=REGISTRY,
)
ISR_SHRINKS = Counter(
    "brook_isr_shrinks",
    "Followers removed from the ISR of partitions this broker leads",
    registry=REGISTRY,
)
ISR_EXPANDS = Counter(
    "brook_isr_expands",
    "Followers added to the ISR of partitions this broker leads",
    registry=REGISTRY,
)
LEADER_ELECTIONS = Counter(
    "brook_leader_elections",
    "Partition leaders elected (new leader epochs) while this broker was the active controller",
    registry=REGISTRY,
)
GROUP_REBALANCES = Counter(
    "brook_group_rebalances",
    "Generations formed by consumer groups this broker coordinates",
    registry=REGISTRY,
)
OFFSET_COMMITS = Counter(
    "brook_offset_commits",
    "Partition offsets committed to groups this broker coordinates",
    registry=REGISTRY,
)
EVENT_LOOP_LAG = Histogram(
    "brook_event_loop_lag_seconds",
    "How late the event loop woke a task that asked to wake at a set time: while the "
    "loop is blocked, no request of any client is read, answered or replicated",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
LOOP_LAG_INTERVAL_S = 0.05


async def watch_event_loop_lag(
    interval_s: float = LOOP_LAG_INTERVAL_S, clock: Callable[[], float] = time.monotonic
) -> None:
    """Sleep ``interval_s`` again and again and observe how much later than asked each
    sleep ends: the time the loop spent in something that did not yield."""
    while True:
        asked = clock() + interval_s
        await asyncio.sleep(interval_s)
        EVENT_LOOP_LAG.observe(max(0.0, clock() - asked))


class PartitionOffsets(Protocol):
    # Read-only members, so that any object with these values fits (a frozen dataclass,
    # properties, a subtype), not only one whose attributes may be set.
    @property
    def log_start_offset(self) -> int: ...
    @property
    def log_end_offset(self) -> int: ...
    @property
    def high_watermark(self) -> int: ...
    @property
    def size_bytes(self) -> int: ...


class PartitionCollector(Collector):
    """Per-partition log start offset, log end offset, high watermark and size."""

    def __init__(
        self, partitions: Callable[[], Iterable[tuple[str, int, PartitionOffsets]]]
    ) -> None:
        self._partitions = partitions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "log_start_offset": GaugeMetricFamily(
                "brook_log_start_offset",
                "First offset still in the log",
                labels=["topic", "partition"],
            ),
            "log_end_offset": GaugeMetricFamily(
                "brook_log_end_offset",
                "Offset the next record will get",
                labels=["topic", "partition"],
            ),
            "high_watermark": GaugeMetricFamily(
                "brook_high_watermark",
                "Offset below which consumers can read",
                labels=["topic", "partition"],
            ),
            "size_bytes": GaugeMetricFamily(
                "brook_log_size_bytes",
                "Bytes of all segments of the partition",
                labels=["topic", "partition"],
            ),
        }
        for topic, partition, log in self._partitions():
            labels = [topic, str(partition)]
            for attribute, family in families.items():
                family.add_metric(labels, getattr(log, attribute))
        yield from families.values()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class ControllerCollector(Collector):
    """Whether this broker is the active controller, and the offline partitions it sees
    (only the active controller reports them, so a sum over brokers counts each once)."""

    def __init__(
        self, is_active: Callable[[], bool], offline_partitions: Callable[[], int]
    ) -> None:
        self._is_active = is_active
        self._offline_partitions = offline_partitions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "brook_active_controller",
            "1 on the broker that is the active controller, else 0",
            value=1 if self._is_active() else 0,
        )
        yield GaugeMetricFamily(
            "brook_offline_partitions",
            "Partitions without a leader, as the active controller sees them",
            value=self._offline_partitions(),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class MetadataState(Protocol):
    @property
    def applied_offset(self) -> int: ...

    @property
    def state_digest(self) -> int: ...


class MetadataCollector(Collector):
    """The last metadata (Raft) entry this broker applied and a digest of the state it
    holds: brokers that show the same index must show the same digest."""

    def __init__(self, metadata: MetadataState) -> None:
        self._metadata = metadata

    def collect(self) -> Iterator[GaugeMetricFamily]:
        metadata = self._metadata
        yield GaugeMetricFamily(
            "brook_metadata_applied_index",
            "Index of the last metadata log entry applied by this broker",
            value=metadata.applied_offset,
        )
        yield GaugeMetricFamily(
            "brook_metadata_state_digest",
            "52-bit digest of the metadata state this broker holds (equal on every broker "
            "at the same applied index)",
            value=metadata.state_digest,
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class ReplicationCollector(Collector):
    """Partitions led here whose ISR is smaller than their replica set (under-replicated)
    or than their min.insync.replicas (acks=all is refused), computed at scrape time
    from ``(isr size, replica count, min.insync.replicas)`` of each partition led here."""

    def __init__(self, led_partitions: Callable[[], Iterable[tuple[int, int, int]]]) -> None:
        self._led_partitions = led_partitions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        under_replicated = under_min_isr = 0
        for isr, replicas, min_isr in self._led_partitions():
            under_replicated += isr < replicas
            under_min_isr += isr < min_isr
        yield GaugeMetricFamily(
            "brook_under_replicated_partitions",
            "Partitions led by this broker with fewer in-sync replicas than replicas",
            value=under_replicated,
        )
        yield GaugeMetricFamily(
            "brook_under_min_isr_partitions",
            "Partitions led by this broker with fewer in-sync replicas than min.insync.replicas",
            value=under_min_isr,
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class ConnectionCounts(Protocol):
    @property
    def open_connections(self) -> int: ...
    @property
    def refused(self) -> Mapping[str, int]:
        """Connections closed at once, by the limit (Kafka's setting name) they were over."""

    @property
    def closed(self) -> Mapping[str, int]:
        """Connections the broker closed, by the setting that made it close them."""

    @property
    def queued_request_bytes(self) -> int: ...


class ConnectionCollector(Collector):
    """Kafka protocol connections: open, refused and closed by the limit that applied, and
    the bytes of requests received and not yet answered (``queued.max.request.bytes``)."""

    def __init__(self, counts: ConnectionCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        counts = self._counts
        yield GaugeMetricFamily(
            "brook_connections", "Open Kafka protocol connections", value=counts.open_connections
        )
        refused = CounterMetricFamily(
            "brook_connections_refused",
            "Connections closed as soon as accepted, by the limit they were over",
            labels=["limit"],
        )
        for limit, count in counts.refused.items():
            refused.add_metric([limit], count)
        yield refused
        closed = CounterMetricFamily(
            "brook_connections_closed",
            "Connections the broker closed, by the setting that made it close them",
            labels=["reason"],
        )
        for reason, count in counts.closed.items():
            closed.add_metric([reason], count)
        yield closed
        yield GaugeMetricFamily(
            "brook_queued_request_bytes",
            "Bytes of requests received and not yet answered (queued.max.request.bytes)",
            value=counts.queued_request_bytes,
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class CleanerState(Protocol):
    @property
    def runs(self) -> int: ...
    @property
    def bytes_read(self) -> int: ...
    @property
    def bytes_written(self) -> int: ...
    @property
    def last_run_end_ms(self) -> int: ...
    @property
    def dirty_ratios(self) -> Mapping[tuple[str, int], float]: ...
    @property
    def uncleanable(self) -> Collection[tuple[str, int]]: ...


class CleanerCollector(Collector):
    """The log cleaner's work, read from its counters when scraped (Kafka's
    kafka.log:type=LogCleaner and LogCleanerManager metrics)."""

    def __init__(self, state: CleanerState, clock_ms: Callable[[], int] | None = None) -> None:
        self._state = state
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = self._state
        yield CounterMetricFamily(
            "brook_log_cleaner_runs", "Cleaning runs completed", value=state.runs
        )
        yield CounterMetricFamily(
            "brook_log_cleaner_bytes_read",
            "Bytes of segments the cleaner read",
            value=state.bytes_read,
        )
        yield CounterMetricFamily(
            "brook_log_cleaner_bytes_written",
            "Bytes of cleaned segments the cleaner wrote",
            value=state.bytes_written,
        )
        since = (self._clock_ms() - state.last_run_end_ms) / 1000
        yield GaugeMetricFamily(
            "brook_log_cleaner_seconds_since_last_run",
            "Seconds since the last cleaning run ended, or the cleaner started",
            value=since,
        )
        dirty = GaugeMetricFamily(
            "brook_log_cleaner_dirty_ratio",
            "Share of a compacted log's cleanable bytes not yet cleaned",
            labels=["topic", "partition"],
        )
        for (topic, partition), ratio in sorted(state.dirty_ratios.items()):
            dirty.add_metric([topic, str(partition)], ratio)
        yield dirty
        yield GaugeMetricFamily(
            "brook_log_cleaner_uncleanable_partitions",
            "Compacted partitions the cleaner skips after failing on them",
            value=len(state.uncleanable),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


GROUP_STATES = ("Empty", "PreparingRebalance", "CompletingRebalance", "Stable")


class GroupLag(Protocol):
    @property
    def group_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def members(self) -> int: ...
    @property
    def lag(self) -> Iterable[tuple[str, int, int]]:
        """(topic, partition, lag) of each committed partition whose log end is known here."""


class GroupCollector(Collector):
    """Consumer groups coordinated by this broker: how many in each state, their members,
    and each committed partition's lag (high watermark minus committed offset), for the
    partitions of which this broker holds a replica."""

    def __init__(self, groups: Callable[[], Iterable[GroupLag]]) -> None:
        self._groups = groups

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_state = GaugeMetricFamily(
            "brook_groups", "Consumer groups coordinated by this broker, by state", labels=["state"]
        )
        members = GaugeMetricFamily(
            "brook_group_members", "Members of each consumer group", labels=["group"]
        )
        lag = GaugeMetricFamily(
            "brook_group_lag",
            "Records between a group's committed offset and the partition's high watermark",
            labels=["group", "topic", "partition"],
        )
        counts = dict.fromkeys(GROUP_STATES, 0)
        for group in self._groups():
            counts[group.state] = counts.get(group.state, 0) + 1
            members.add_metric([group.group_id], group.members)
            for topic, partition, records in group.lag:
                lag.add_metric([group.group_id, topic, str(partition)], records)
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield by_state
        yield members
        yield lag

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
