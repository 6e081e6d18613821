"""The metadata digest: equal for equal states however they were built, different when
anything differs, and the same in every process (no dependence on string hashing)."""

from __future__ import annotations

import uuid

import pytest
from brook_broker.metadata.cluster_state import ClusterState
from brook_broker.metadata.commands import (
    AlterTopicConfigs,
    CreateTopic,
    RegisterBroker,
    UnfenceBroker,
)
from brook_broker.metadata.digest import DIGEST_BITS, canonical, digest

TOPIC_ID = uuid.UUID("00000000-0000-0000-0000-00000000000a")


def state(*brokers: int) -> ClusterState:
    built = ClusterState()
    for node in brokers:
        built.apply(RegisterBroker(node, "127.0.0.1", 9092 + node, None))
        built.apply(UnfenceBroker(node, 1))
    built.apply(CreateTopic("orders", TOPIC_ID, 3, 2, {"cleanup.policy": "compact"}))
    return built


def test_equal_states_built_in_another_order_have_one_digest() -> None:
    assert digest(state(0, 1, 2)) == digest(state(2, 0, 1))
    assert digest({"b": 1, "a": {2, 3}}) == digest({"a": {3, 2}, "b": 1})


def test_any_difference_changes_the_digest() -> None:
    before = state(0, 1, 2)
    after = before.copy()
    after.apply(AlterTopicConfigs("orders", {"retention.ms": "1000"}))
    assert digest(before) != digest(after)
    assert digest((1, 2)) != digest((2, 1))
    assert digest({"a": None}) != digest({"a": 0})


def test_the_digest_is_the_same_in_every_process() -> None:
    """Strings hash differently in each process: a fixed value proves that the digest
    does not depend on it."""
    value = {"names": frozenset({"alpha", "beta", "gamma"}), "id": TOPIC_ID, "n": (1, b"\x00")}
    assert digest(value) == 725267220414275
    assert 0 <= digest(value) < 2**DIGEST_BITS


def test_a_value_without_a_canonical_form_is_refused() -> None:
    with pytest.raises(TypeError):
        canonical(object())
