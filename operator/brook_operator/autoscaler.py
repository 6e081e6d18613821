"""How many consumers a group needs, from its lag: the ConsumerGroup controller's decisions,
without I/O (the controller feeds it observations and writes what it decides).

Each observation holds, per partition, the group's committed offset and the partition's
log start and log end offsets. From them:

- **lag** of a partition: by the rule of :mod:`brook_client.lag` (``brook groups`` uses
  it too): records from the committed offset to the log end, never counting records
  retention has already deleted; a partition without a committed offset follows the
  group's reset policy;
- a partition is **stuck** when it has lag and its committed offset has not moved for
  ``stuck_partition_seconds`` while the group committed on other partitions meanwhile (a
  poison record, a wedged consumer): it is reported and left out of the lag that scales;
- the **recommendation** is ceil(lag / lag per replica), bounded by the replica limits
  and by the partitions that have lag (a consumer beyond them has nothing to read; the
  cap is reported, not silent);
- **stabilization** as the HPA's ``behavior``: a scale-up goes to the lowest
  recommendation of the scale-up window, a scale-down to the highest of the scale-down
  window, so a count changes direction only after a whole window; and at most one write
  per cooldown (except from zero, where nothing consumes);
- **scale to zero** (opt-in) once there was neither lag nor new records for the
  scale-down window; any lag scales from zero to at least one replica.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from brook_client.lag import OffsetReset, PartitionOffsets, TopicPartition, lag_of

from .conditions import condition

RATE_WINDOW_S = 60.0
"""How far back the lag growth rate looks (a least-squares slope over that time)."""

# Reasons of decisions (status.reason, Events, the decisions metric).
LAG_ABOVE_TARGET = "LagAboveTarget"
LAG_BELOW_TARGET = "LagBelowTarget"
ON_TARGET = "OnTarget"
SCALE_FROM_ZERO = "ScaleFromZero"
IDLE = "Idle"
STABILIZING_UP = "ScaleUpStabilizing"
STABILIZING_DOWN = "ScaleDownStabilizing"
COOLDOWN = "Cooldown"

READY = "Ready"
CAPPED_BY_PARTITIONS = "CappedByPartitions"
STUCK_PARTITIONS = "StuckPartitions"


@dataclass(frozen=True)
class AutoscalerSpec:
    """The scaling part of a ConsumerGroup's spec (defaults as the CRD's)."""

    min_replicas: int = 1
    max_replicas: int = 1
    lag_per_replica: int = 1000
    offset_reset: OffsetReset = OffsetReset.LATEST
    scale_up_stabilization_seconds: float = 0.0
    scale_down_stabilization_seconds: float = 300.0
    cooldown_seconds: float = 30.0
    stuck_partition_seconds: float = 300.0
    scale_to_zero: bool = False

    @classmethod
    def from_resource(cls, spec: Mapping[str, Any]) -> AutoscalerSpec:
        defaults = cls()
        return cls(
            min_replicas=int(spec.get("minReplicas", defaults.min_replicas)),
            max_replicas=int(spec["maxReplicas"]),
            lag_per_replica=int(spec.get("lagPerReplica", defaults.lag_per_replica)),
            offset_reset=OffsetReset(spec.get("offsetReset", defaults.offset_reset)),
            scale_up_stabilization_seconds=float(
                spec.get("scaleUpStabilizationSeconds", defaults.scale_up_stabilization_seconds)
            ),
            scale_down_stabilization_seconds=float(
                spec.get("scaleDownStabilizationSeconds", defaults.scale_down_stabilization_seconds)
            ),
            cooldown_seconds=float(spec.get("cooldownSeconds", defaults.cooldown_seconds)),
            stuck_partition_seconds=float(
                spec.get("stuckPartitionSeconds", defaults.stuck_partition_seconds)
            ),
            scale_to_zero=bool(spec.get("scaleToZero", defaults.scale_to_zero)),
        )


@dataclass(frozen=True)
class PartitionLagView:
    topic: str
    partition: int
    committed_offset: int | None
    log_end_offset: int | None
    lag: int | None
    stuck: bool


@dataclass(frozen=True)
class StuckPartition:
    topic: str
    partition: int
    since: float
    """When its committed offset last moved (or was first seen), in the observations' clock."""


@dataclass(frozen=True)
class Decision:
    """What one observation leads to; ``desired`` is the replica count to write (the same as
    ``replicas`` when nothing is to be written)."""

    at: float
    replicas: int
    desired: int
    recommendation: int
    reason: str
    message: str
    partitions: tuple[PartitionLagView, ...]
    total_lag: int
    scaling_lag: int
    lag_growth_per_second: float
    partitions_with_lag: int
    capped_by_partitions: bool
    cap_message: str
    stuck: tuple[StuckPartition, ...]
    newly_stuck: tuple[StuckPartition, ...]

    @property
    def direction(self) -> str | None:
        """ "up", "down", or None when nothing is written."""
        if self.desired == self.replicas:
            return None
        return "up" if self.desired > self.replicas else "down"


def growth_rate(samples: Sequence[tuple[float, int]]) -> float:
    """Records per second: the least-squares slope of the total lag over ``samples``
    (smoother than the difference of the last two reads); 0 with fewer than two."""
    if len(samples) < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / len(samples)
    mean_lag = sum(lag for _, lag in samples) / len(samples)
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (lag - mean_lag) for t, lag in samples) / spread


@dataclass
class _PartitionHistory:
    committed_offset: int | None
    since: float
    """When the committed offset last moved, or was first seen."""
    stuck: bool = False


@dataclass
class Autoscaler:
    """The memory of one ConsumerGroup between observations: the recommendations of the
    stabilization windows, the lag samples of the growth rate, when each partition's
    commit last moved, the last write. A new one (an operator restart) starts with the
    current replica count as its only recommendation, so it holds that count for a
    scale-down window instead of acting on no history."""

    spec: AutoscalerSpec
    replicas: int
    started: float
    last_scale_at: float | None = None
    recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    lag_samples: deque[tuple[float, int]] = field(default_factory=deque)
    partitions: dict[TopicPartition, _PartitionHistory] = field(default_factory=dict)
    last_lag_at: float | None = None
    last_traffic_at: float | None = None
    log_end_offsets: dict[TopicPartition, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.recommendations.append((self.started, self.replicas))

    def scaled(self, at: float, replicas: int) -> None:
        """The controller wrote ``replicas`` at ``at``."""
        self.last_scale_at = at
        self.replicas = replicas

    def observe(
        self, at: float, offsets: Mapping[TopicPartition, PartitionOffsets], replicas: int
    ) -> Decision:
        """The decision for one read of the group's offsets, with ``replicas`` running."""
        spec = self.spec
        self.replicas = replicas
        newly_stuck = self._track_commits(at, offsets)
        self._track_traffic(at, offsets)
        views = []
        total_lag = scaling_lag = partitions_with_lag = 0
        for topic_partition in sorted(offsets):
            lag = lag_of(offsets[topic_partition], spec.offset_reset)
            history = self.partitions[topic_partition]
            views.append(
                PartitionLagView(
                    *topic_partition,
                    committed_offset=offsets[topic_partition].committed_offset,
                    log_end_offset=offsets[topic_partition].log_end_offset,
                    lag=lag,
                    stuck=history.stuck,
                )
            )
            total_lag += lag or 0
            if lag and not history.stuck:
                scaling_lag += lag
                partitions_with_lag += 1
        if total_lag:
            self.last_lag_at = at
        self.lag_samples.append((at, total_lag))
        while self.lag_samples and self.lag_samples[0][0] < at - RATE_WINDOW_S:
            self.lag_samples.popleft()

        recommendation, capped, cap_message = self._recommend(at, scaling_lag, partitions_with_lag)
        horizon = max(spec.scale_up_stabilization_seconds, spec.scale_down_stabilization_seconds)
        while self.recommendations and self.recommendations[0][0] <= at - horizon:
            self.recommendations.popleft()
        desired, reason, message = self._stabilize(at, recommendation, scaling_lag)
        self.recommendations.append((at, recommendation))
        stuck = tuple(
            StuckPartition(topic, partition, history.since)
            for (topic, partition), history in sorted(self.partitions.items())
            if history.stuck
        )
        return Decision(
            at=at,
            replicas=replicas,
            desired=desired,
            recommendation=recommendation,
            reason=reason,
            message=message,
            partitions=tuple(views),
            total_lag=total_lag,
            scaling_lag=scaling_lag,
            lag_growth_per_second=round(growth_rate(self.lag_samples), 3),
            partitions_with_lag=partitions_with_lag,
            capped_by_partitions=capped,
            cap_message=cap_message,
            stuck=stuck,
            newly_stuck=tuple(s for s in stuck if (s.topic, s.partition) in newly_stuck),
        )

    # --- what the offsets say

    def _track_commits(
        self, at: float, offsets: Mapping[TopicPartition, PartitionOffsets]
    ) -> set[TopicPartition]:
        """Update when each commit last moved and which partitions are stuck; the
        partitions that became stuck now."""
        for topic_partition in self.partitions.keys() - offsets.keys():
            del self.partitions[topic_partition]
        for topic_partition, read in offsets.items():
            history = self.partitions.get(topic_partition)
            if history is None or history.committed_offset != read.committed_offset:
                self.partitions[topic_partition] = _PartitionHistory(read.committed_offset, at)
        newly_stuck = set()
        for topic_partition, history in self.partitions.items():
            lag = lag_of(offsets[topic_partition], self.spec.offset_reset)
            # The group consumes when a commit on another partition moved since this one's.
            consuming = any(
                other.since > history.since
                for key, other in self.partitions.items()
                if key != topic_partition
            )
            stuck = bool(lag) and (
                history.stuck
                or (at - history.since >= self.spec.stuck_partition_seconds and consuming)
            )
            if stuck and not history.stuck:
                newly_stuck.add(topic_partition)
            history.stuck = stuck
        return newly_stuck

    def _track_traffic(self, at: float, offsets: Mapping[TopicPartition, PartitionOffsets]) -> None:
        log_end_offsets = {
            topic_partition: read.log_end_offset
            for topic_partition, read in offsets.items()
            if read.log_end_offset is not None
        }
        if self.last_traffic_at is None or any(
            self.log_end_offsets.get(topic_partition) != offset
            for topic_partition, offset in log_end_offsets.items()
        ):
            self.last_traffic_at = at
        self.log_end_offsets = log_end_offsets

    # --- what to run

    def _idle(self, at: float) -> bool:
        """No lag and no new records for a whole scale-down window."""
        window = self.spec.scale_down_stabilization_seconds
        quiet_since = max(
            self.last_lag_at if self.last_lag_at is not None else self.started,
            self.last_traffic_at if self.last_traffic_at is not None else self.started,
            self.started,
        )
        return self.last_lag_at != at and at - quiet_since >= window

    def _recommend(
        self, at: float, scaling_lag: int, partitions_with_lag: int
    ) -> tuple[int, bool, str]:
        """Replicas for the lag now, whether the partitions capped them, and a message."""
        spec = self.spec
        wanted = math.ceil(scaling_lag / spec.lag_per_replica)
        bounded = min(wanted, spec.max_replicas)
        capped = bounded > partitions_with_lag
        cap_message = (
            f"{wanted} replicas wanted for {scaling_lag} records of lag "
            f"({spec.lag_per_replica} per replica), capped at the {partitions_with_lag} "
            "partitions that have lag"
            if capped
            else f"{partitions_with_lag} partitions have lag; {min(wanted, spec.max_replicas)} "
            "replicas wanted"
        )
        if capped:
            bounded = partitions_with_lag
        # Zero replicas only by scaleToZero, once idle (any lag means not idle).
        floor = 0 if spec.scale_to_zero and self._idle(at) else max(spec.min_replicas, 1)
        return max(bounded, floor), capped, cap_message

    def _stabilize(self, at: float, recommendation: int, scaling_lag: int) -> tuple[int, str, str]:
        """The HPA's rule: up to the lowest recommendation of the scale-up window, down to
        the highest of the scale-down window; then the cooldown."""
        spec = self.spec
        current = self.replicas

        def within(window: float) -> list[int]:
            return [r for t, r in self.recommendations if t > at - window] + [recommendation]

        up_to = min(within(spec.scale_up_stabilization_seconds))
        # 0 is recommended only after a whole quiet scale-down window: no second wait.
        down_to = 0 if recommendation == 0 else max(within(spec.scale_down_stabilization_seconds))
        lag = f"lag {scaling_lag} (target {spec.lag_per_replica} per replica)"
        if current < up_to:
            desired = up_to
            reason = SCALE_FROM_ZERO if current == 0 else LAG_ABOVE_TARGET
        elif current > down_to:
            desired = down_to
            reason = IDLE if desired == 0 else LAG_BELOW_TARGET
        elif recommendation > current:
            return (
                current,
                STABILIZING_UP,
                (
                    f"{lag}: {recommendation} replicas recommended, held at {current} for the "
                    f"{spec.scale_up_stabilization_seconds:g} s scale-up window"
                ),
            )
        elif recommendation < current:
            return (
                current,
                STABILIZING_DOWN,
                (
                    f"{lag}: {recommendation} replicas recommended, held at {current} for the "
                    f"{spec.scale_down_stabilization_seconds:g} s scale-down window"
                ),
            )
        else:
            return current, ON_TARGET, f"{lag}: {current} replicas"
        cooling = self.last_scale_at is not None and at - self.last_scale_at < spec.cooldown_seconds
        if cooling and current > 0:
            wait = spec.cooldown_seconds - (at - self.last_scale_at)  # type: ignore[operator]
            return (
                current,
                COOLDOWN,
                (
                    f"{lag}: {desired} replicas wanted, held at {current} for {wait:.0f} s more "
                    f"of the {spec.cooldown_seconds:g} s cooldown"
                ),
            )
        message = (
            f"no lag and no new records for {spec.scale_down_stabilization_seconds:g} s: "
            f"scaled from {current} to 0"
            if reason == IDLE
            else f"{lag}: scaled from {current} to {desired}"
        )
        return desired, reason, message


def conditions(
    decision: Decision | None,
    failure: tuple[str, str] | None,
    previous: Sequence[Mapping[str, Any]],
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Ready, CappedByPartitions and StuckPartitions; each keeps its lastTransitionTime while
    its status stays. ``failure`` (reason, message) when the lag could not be read or the
    target could not be scaled: Ready is False and the other two keep what they said."""
    wanted: list[tuple[str, bool, str, str]] = []
    if failure is not None:
        wanted.append((READY, False, *failure))
    elif decision is not None:
        wanted.append((READY, True, decision.reason, decision.message))
    if decision is not None:
        wanted.append(
            (
                CAPPED_BY_PARTITIONS,
                decision.capped_by_partitions,
                "PartitionCap" if decision.capped_by_partitions else "BelowPartitionCap",
                decision.cap_message,
            )
        )
        stuck_message = (
            "committed offsets not moving while the group consumes: "
            + ", ".join(f"{s.topic}-{s.partition}" for s in decision.stuck)
            if decision.stuck
            else "every partition with lag is being consumed"
        )
        wanted.append(
            (
                STUCK_PARTITIONS,
                bool(decision.stuck),
                "CommitsNotMoving" if decision.stuck else "NoneStuck",
                stuck_message,
            )
        )
    result = [
        {**condition(kind, holds, reason, message, previous, now), "observedGeneration": generation}
        for kind, holds, reason, message in wanted
    ]
    kept = {kind for kind, *_ in wanted}
    result.extend(dict(c) for c in previous if c.get("type") not in kept)
    return result
