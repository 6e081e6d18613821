from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from brook_client.lag import OffsetReset, PartitionOffsets, lag_of
from brook_operator.autoscaler import (
    CAPPED_BY_PARTITIONS,
    COOLDOWN,
    IDLE,
    LAG_ABOVE_TARGET,
    LAG_BELOW_TARGET,
    ON_TARGET,
    READY,
    SCALE_FROM_ZERO,
    STABILIZING_DOWN,
    STABILIZING_UP,
    STUCK_PARTITIONS,
    Autoscaler,
    AutoscalerSpec,
    Decision,
    conditions,
    growth_rate,
)

TOPIC = "orders"


def read(
    committed: Sequence[int | None], log_end: Sequence[int], log_start: int = 0
) -> dict[tuple[str, int], PartitionOffsets]:
    return {
        (TOPIC, p): PartitionOffsets(c, log_start, e)
        for p, (c, e) in enumerate(zip(committed, log_end, strict=True))
    }


def spec(**fields: object) -> AutoscalerSpec:
    settings: dict[str, object] = {
        "min_replicas": 1,
        "max_replicas": 10,
        "lag_per_replica": 100,
        "scale_down_stabilization_seconds": 30.0,
        "cooldown_seconds": 0.0,
        **fields,
    }
    return AutoscalerSpec(**settings)  # type: ignore[arg-type]


def follow(
    autoscaler: Autoscaler, at: float, committed: Sequence[int | None], log_end: Sequence[int]
) -> Decision:
    """Observe, and apply the decision as the controller would."""
    decision = autoscaler.observe(at, read(committed, log_end), autoscaler.replicas)
    if decision.direction is not None:
        autoscaler.scaled(at, decision.desired)
    return decision


# --- lag -----------------------------------------------------------------------------------


def test_records_deleted_by_retention_are_not_lag() -> None:
    assert lag_of(PartitionOffsets(10, 400, 1000), OffsetReset.LATEST) == 600
    assert lag_of(PartitionOffsets(500, 400, 1000), OffsetReset.LATEST) == 500


@pytest.mark.parametrize(("reset", "lag"), [(OffsetReset.LATEST, 0), (OffsetReset.EARLIEST, 600)])
def test_partition_without_commit_follows_the_reset_policy(reset: OffsetReset, lag: int) -> None:
    assert lag_of(PartitionOffsets(None, 400, 1000), reset) == lag


def test_unreadable_partition_has_unknown_lag() -> None:
    assert lag_of(PartitionOffsets(5, None, None), OffsetReset.EARLIEST) is None


def test_growth_rate_is_the_slope_of_the_lag() -> None:
    assert growth_rate([(0.0, 100), (2.0, 300), (4.0, 500)]) == pytest.approx(100.0)
    assert growth_rate([(0.0, 500), (1.0, 450), (2.0, 400)]) == pytest.approx(-50.0)
    assert growth_rate([(0.0, 100)]) == 0.0


def test_status_rows_show_lag_per_partition_and_growth() -> None:
    autoscaler = Autoscaler(spec(), replicas=1, started=0.0)
    follow(autoscaler, 0.0, [0, 0], [10, 20])
    decision = follow(autoscaler, 10.0, [0, 0], [110, 120])
    assert [(v.partition, v.lag) for v in decision.partitions] == [(0, 110), (1, 120)]
    assert decision.total_lag == 230
    assert decision.lag_growth_per_second == pytest.approx(20.0)


# --- how many replicas ---------------------------------------------------------------------


def test_scales_up_at_once_to_lag_over_lag_per_replica() -> None:
    autoscaler = Autoscaler(spec(), replicas=1, started=0.0)
    decision = follow(autoscaler, 1.0, [0, 0, 0, 0], [100, 100, 100, 50])
    assert (decision.desired, decision.direction, decision.reason) == (4, "up", LAG_ABOVE_TARGET)
    assert not decision.capped_by_partitions


def test_capped_by_partitions_with_lag_and_reported() -> None:
    autoscaler = Autoscaler(spec(max_replicas=20), replicas=1, started=0.0)
    decision = follow(autoscaler, 1.0, [0] * 6, [1000] * 6)
    assert decision.desired == 6
    assert decision.capped_by_partitions
    assert "60 replicas wanted for 6000 records" in decision.cap_message
    assert "6 partitions" in decision.cap_message


def test_a_hot_partition_gets_one_replica_and_the_cap_says_why() -> None:
    autoscaler = Autoscaler(spec(), replicas=1, started=0.0)
    decision = follow(autoscaler, 1.0, [0, 5, 5, 5], [5000, 5, 5, 5])
    assert decision.desired == 1
    assert decision.reason == ON_TARGET
    assert decision.capped_by_partitions
    assert decision.partitions_with_lag == 1


def test_max_replicas_binds_before_the_partitions() -> None:
    autoscaler = Autoscaler(spec(max_replicas=3), replicas=1, started=0.0)
    decision = follow(autoscaler, 1.0, [0] * 6, [1000] * 6)
    assert decision.desired == 3
    assert not decision.capped_by_partitions


def test_min_replicas_when_there_is_no_lag() -> None:
    autoscaler = Autoscaler(spec(min_replicas=2), replicas=1, started=0.0)
    assert follow(autoscaler, 1.0, [5, 5], [5, 5]).desired == 2


# --- stabilization and cooldown ------------------------------------------------------------


def test_scale_down_waits_for_the_window_then_takes_its_highest_recommendation() -> None:
    autoscaler = Autoscaler(spec(), replicas=1, started=0.0)
    assert follow(autoscaler, 0.0, [0] * 6, [500] * 6).desired == 6
    held = follow(autoscaler, 10.0, [500] * 6, [500] * 6)
    assert (held.desired, held.reason) == (6, STABILIZING_DOWN)
    assert follow(autoscaler, 20.0, [400, 400, 500, 500, 500, 500], [500] * 6).desired == 6
    # At 31 the recommendation of 0 s is out of the window; the one of 20 s (2) is not.
    down = follow(autoscaler, 31.0, [500] * 6, [500] * 6)
    assert (down.desired, down.reason) == (2, LAG_BELOW_TARGET)
    assert follow(autoscaler, 51.0, [500] * 6, [500] * 6).desired == 1


def test_scale_up_window_ignores_a_short_spike() -> None:
    autoscaler = Autoscaler(spec(scale_up_stabilization_seconds=10.0), replicas=1, started=0.0)
    spike = follow(autoscaler, 2.0, [0] * 4, [300] * 4)
    assert (spike.desired, spike.reason) == (1, STABILIZING_UP)
    assert follow(autoscaler, 4.0, [300] * 4, [300] * 4).desired == 1
    # Sustained lag for the whole window: up to the lowest recommendation in it.
    for at in (6.0, 9.0, 12.0):
        follow(autoscaler, at, [300] * 4, [500] * 4)
    decision = follow(autoscaler, 15.0, [300] * 4, [500] * 4)
    assert (decision.desired, decision.reason) == (4, LAG_ABOVE_TARGET)


def test_replica_count_never_changes_direction_inside_the_window() -> None:
    autoscaler = Autoscaler(spec(max_replicas=6), replicas=1, started=0.0)
    lag_by_tick = [600, 0, 600, 0, 600, 0, 200, 0, 600, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    writes = []
    for tick, lag in enumerate(lag_by_tick):
        at = tick * 5.0
        decision = follow(autoscaler, at, [0] * 6, [lag // 6] * 6)
        if decision.direction:
            writes.append((at, decision.direction))
    for (at, direction), (next_at, next_direction) in itertools.pairwise(writes):
        if direction == "up" and next_direction == "down":
            assert next_at - at >= 30.0
    assert writes[0] == (0.0, "up")
    assert writes[-1][1] == "down"


def test_cooldown_delays_the_next_scale_up() -> None:
    autoscaler = Autoscaler(spec(cooldown_seconds=20.0), replicas=1, started=0.0)
    assert follow(autoscaler, 0.0, [0] * 6, [50] * 6).desired == 3
    held = follow(autoscaler, 5.0, [0] * 6, [150] * 6)
    assert (held.desired, held.reason) == (3, COOLDOWN)
    assert "15 s more" in held.message
    assert follow(autoscaler, 21.0, [0] * 6, [150] * 6).desired == 6


# --- stuck partitions ----------------------------------------------------------------------


def test_a_partition_whose_commit_does_not_move_while_others_do_is_stuck() -> None:
    autoscaler = Autoscaler(spec(stuck_partition_seconds=20.0), replicas=1, started=0.0)
    decision = follow(autoscaler, 0.0, [0, 0, 0], [900, 90, 90])
    assert (decision.desired, decision.capped_by_partitions) == (3, True)
    for at, done in ((10.0, 30), (19.0, 60)):
        decision = follow(autoscaler, at, [0, done, done], [900, 90, 90])
        assert not decision.stuck
    decision = follow(autoscaler, 25.0, [0, 80, 80], [900, 90, 90])
    assert [(s.partition, s.since) for s in decision.stuck] == [(0, 0.0)]
    assert [s.partition for s in decision.newly_stuck] == [0]
    assert decision.total_lag == 920  # shown...
    assert decision.scaling_lag == 20  # ...but not driving the count
    assert [v.stuck for v in decision.partitions] == [True, False, False]
    again = follow(autoscaler, 30.0, [0, 85, 85], [900, 90, 90])
    assert again.stuck and not again.newly_stuck
    moved = follow(autoscaler, 35.0, [1, 90, 90], [900, 90, 90])
    assert not moved.stuck


def test_a_stuck_partition_with_growing_lag_does_not_push_replicas_up() -> None:
    autoscaler = Autoscaler(spec(stuck_partition_seconds=10.0), replicas=1, started=0.0)
    follow(autoscaler, 0.0, [0, 0, 0, 0], [0, 0, 0, 0])
    for tick in range(1, 20):
        at = tick * 2.0
        committed = [0] + [tick * 10] * 3
        log_end = [tick * 500] + [tick * 10 + 5] * 3
        decision = follow(autoscaler, at, committed, log_end)
    assert decision.stuck
    assert decision.total_lag > 9000
    assert autoscaler.replicas == 1
    assert not decision.capped_by_partitions


def test_nothing_is_stuck_while_the_whole_group_stands_still() -> None:
    autoscaler = Autoscaler(spec(stuck_partition_seconds=10.0), replicas=0, started=0.0)
    for at in (0.0, 20.0, 40.0):
        decision = autoscaler.observe(at, read([0, 0], [50, 50]), 1)
    assert not decision.stuck


def test_a_partition_never_committed_can_be_stuck() -> None:
    autoscaler = Autoscaler(
        spec(stuck_partition_seconds=10.0, offset_reset=OffsetReset.EARLIEST),
        replicas=1,
        started=0.0,
    )
    follow(autoscaler, 0.0, [None, 0], [100, 100])
    decision = follow(autoscaler, 12.0, [None, 50], [100, 100])
    assert [s.partition for s in decision.stuck] == [0]
    assert decision.partitions[0].lag == 100


# --- zero ----------------------------------------------------------------------------------


def test_scale_to_zero_after_a_quiet_window_and_back_at_once() -> None:
    autoscaler = Autoscaler(spec(scale_to_zero=True, cooldown_seconds=60.0), 1, started=0.0)
    assert follow(autoscaler, 0.0, [10, 10], [10, 10]).desired == 1
    # New records (consumed at once): traffic, so not idle.
    assert follow(autoscaler, 20.0, [20, 20], [20, 20]).desired == 1
    assert follow(autoscaler, 45.0, [20, 20], [20, 20]).desired == 1
    zero = follow(autoscaler, 51.0, [20, 20], [20, 20])
    assert (zero.desired, zero.reason) == (0, IDLE)
    # Lag again: from zero within the cooldown, since nothing consumes.
    back = follow(autoscaler, 52.0, [20, 20], [25, 20])
    assert (back.desired, back.reason) == (1, SCALE_FROM_ZERO)


def test_no_scale_to_zero_unless_asked() -> None:
    autoscaler = Autoscaler(spec(min_replicas=0), replicas=1, started=0.0)
    for at in (0.0, 40.0, 80.0):
        assert follow(autoscaler, at, [10], [10]).desired == 1


# --- restart, spec, conditions -------------------------------------------------------------


def test_a_new_autoscaler_holds_the_current_count_for_a_scale_down_window() -> None:
    autoscaler = Autoscaler(spec(), replicas=6, started=100.0)
    assert follow(autoscaler, 102.0, [5] * 6, [5] * 6).desired == 6
    assert follow(autoscaler, 131.0, [5] * 6, [5] * 6).desired == 1


def test_spec_from_resource_defaults() -> None:
    parsed = AutoscalerSpec.from_resource({"maxReplicas": 4, "offsetReset": "earliest"})
    assert parsed == AutoscalerSpec(max_replicas=4, offset_reset=OffsetReset.EARLIEST)
    assert (parsed.cooldown_seconds, parsed.stuck_partition_seconds) == (30.0, 300.0)


def test_conditions_report_the_cap_and_stuck_partitions() -> None:
    autoscaler = Autoscaler(spec(max_replicas=20), replicas=1, started=0.0)
    decision = follow(autoscaler, 1.0, [0] * 6, [1000] * 6)
    first = conditions(decision, None, [], "2024-01-01T00:00:00Z", 3)
    by_type = {c["type"]: c for c in first}
    assert by_type[READY]["status"] == "True"
    assert by_type[CAPPED_BY_PARTITIONS]["status"] == "True"
    assert "capped at the 6 partitions" in by_type[CAPPED_BY_PARTITIONS]["message"]
    assert by_type[STUCK_PARTITIONS]["status"] == "False"
    assert {c["observedGeneration"] for c in first} == {3}
    later = conditions(decision, None, first, "2024-01-01T00:05:00Z", 3)
    assert all(c["lastTransitionTime"] == "2024-01-01T00:00:00Z" for c in later)
    failed = conditions(None, ("ClusterUnavailable", "no broker"), later, "2024-01-01T00:06:00Z", 3)
    by_type = {c["type"]: c for c in failed}
    assert (by_type[READY]["status"], by_type[READY]["reason"]) == ("False", "ClusterUnavailable")
    assert by_type[READY]["lastTransitionTime"] == "2024-01-01T00:06:00Z"
    assert by_type[CAPPED_BY_PARTITIONS]["status"] == "True"  # kept from before
