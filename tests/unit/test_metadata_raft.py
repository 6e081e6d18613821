"""A Raft follower (pysyncobj with ``RaftMember``'s correction) given AppendEntries
requests by hand: entries it already holds are kept, whatever order requests come in;
only a conflicting entry and those after it are replaced."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from brook_broker.metadata.raft import Entry, RaftMember, Reconciled, reconcile
from pysyncobj import SyncObjConf
from pysyncobj import pickle as raft_pickle
from pysyncobj.node import TCPNode
from pysyncobj.transport import Transport

NO_OP = b"\x01"
"""pysyncobj's no-op command: applying it changes nothing, so any index can hold one."""

LEADER = TCPNode("127.0.0.1:2")


def entry(index: int, term: int) -> Entry:
    return (NO_OP, index, term)


class Wire(Transport):
    """No sockets: keeps what the member sends."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.sent: list[dict[str, Any]] = []

    def send(self, node: Any, message: Any) -> bool:
        self.sent.append(message)
        return True


class Follower:
    """A voter with the log [no-op at index 1, term 0] that only hears from LEADER."""

    def __init__(self) -> None:
        self.member = RaftMember(
            "127.0.0.1:1",
            [LEADER.address],
            conf=SyncObjConf(autoTick=False, appendEntriesUseBatch=False),
            transportClass=Wire,
        )
        self.wire: Wire = self.member._SyncObj__transport

    def receive(self, message: dict[str, Any]) -> dict[str, Any]:
        """Deliver one message from LEADER, apply what is committed; the answer."""
        self.wire.sent.clear()
        self.wire._onMessageReceived(LEADER, message)
        self.member.doTick(0)
        (answer,) = self.wire.sent
        return answer

    def append(
        self, prev: tuple[int, int], entries: list[Entry], commit: int, term: int = 1
    ) -> dict[str, Any]:
        return self.receive(
            {
                "type": "append_entries",
                "term": term,
                "commit_index": commit,
                "prevLogIdx": prev[0],
                "prevLogTerm": prev[1],
                "entries": entries,
            }
        )

    @property
    def log_end(self) -> int:
        return int(self.member.getStatus()["log_len"])

    @property
    def terms(self) -> list[int | None]:
        return [self.member._term_at(index) for index in range(1, self.log_end + 1)]


def accepted(next_index: int) -> dict[str, Any]:
    return {"type": "next_node_idx", "next_node_idx": next_index, "reset": False, "success": True}


@pytest.fixture
def follower() -> Follower:
    return Follower()


def test_a_repeated_request_keeps_the_applied_entries(
    follower: Follower, caplog: pytest.LogCaptureFixture
) -> None:
    """The sequence a paused member saw when it came back: the leader, answering a stale
    refusal, sends again entries the member already holds and has applied."""
    assert follower.append((1, 0), [entry(2, 1), entry(3, 1), entry(4, 1)], commit=3) == (
        accepted(5)
    )
    assert follower.member.raftLastApplied == 3

    with caplog.at_level(logging.WARNING):
        answer = follower.append((1, 0), [entry(2, 1)], commit=4)

    assert answer == accepted(3), "success up to the last entry sent, no further"
    assert follower.terms == [0, 1, 1, 1]
    # The request proves the log matches the leader's only up to index 2.
    assert follower.member.raftCommitIndex == 3
    assert follower.member.raftLastApplied == 3
    assert not caplog.records


def test_a_heartbeat_behind_the_log_keeps_it(follower: Follower) -> None:
    follower.append((1, 0), [entry(2, 1), entry(3, 1)], commit=1)
    assert follower.append((2, 1), [], commit=3) == accepted(3)
    assert follower.terms == [0, 1, 1]
    assert follower.member.raftCommitIndex == 2, "not past the last entry the leader vouched for"


def test_only_a_conflicting_entry_and_those_after_it_are_replaced(follower: Follower) -> None:
    """Entries 3 and 4 of term 1 were never committed; the leader of term 2 holds 3 of
    term 1 and its own 4."""
    follower.append((1, 0), [entry(2, 1), entry(3, 1), entry(4, 1)], commit=2)
    answer = follower.append((1, 0), [entry(2, 1), entry(3, 1), entry(4, 2)], commit=2, term=2)
    assert answer == accepted(5)
    assert follower.terms == [0, 1, 1, 2]


def test_a_request_that_does_not_follow_the_log_is_refused(follower: Follower) -> None:
    follower.append((1, 0), [entry(2, 1)], commit=1)
    answer = follower.append((4, 1), [entry(5, 1)], commit=1)
    assert answer == {"type": "next_node_idx", "next_node_idx": 3, "reset": True, "success": False}
    assert follower.terms == [0, 1]


def test_an_entry_sent_in_pieces_that_is_held_already_is_kept(follower: Follower) -> None:
    """Entries too large for one message come in pieces; the last piece completes them."""
    follower.append((1, 0), [entry(2, 1), entry(3, 1)], commit=3)
    data = raft_pickle.dumps(entry(2, 1))
    pieces = {"start": data[:10], "finish": data[10:]}
    for transmission, piece in pieces.items():
        answer = follower.receive(
            {
                "type": "append_entries",
                "transmission": transmission,
                "data": piece,
                "term": 1,
                "commit_index": 3,
                "prevLogIdx": 1,
                "prevLogTerm": 0,
            }
        )
    assert answer == accepted(3)
    assert follower.terms == [0, 1, 1]
    assert follower.member.raftLastApplied == 3


TERMS = {1: 0, 2: 1, 3: 1, 4: 2}
"""A log: term by index."""


@pytest.mark.parametrize(
    ("prev", "entries", "expected"),
    [
        ((4, 2), [entry(5, 2)], Reconciled(4, 2, [entry(5, 2)], holds_more=False)),
        ((1, 0), [entry(2, 1), entry(3, 1)], Reconciled(3, 1, [], holds_more=True)),
        ((1, 0), [], Reconciled(1, 0, [], holds_more=True)),
        ((2, 1), [entry(3, 1), entry(4, 2)], Reconciled(4, 2, [], holds_more=False)),
        ((2, 1), [entry(3, 1), entry(4, 3)], Reconciled(3, 1, [entry(4, 3)], holds_more=False)),
        ((3, 1), [entry(4, 2), entry(5, 2)], Reconciled(4, 2, [entry(5, 2)], holds_more=False)),
        ((3, 2), [entry(4, 2)], None),
        ((6, 2), [], None),
    ],
)
def test_reconcile(
    prev: tuple[int, int], entries: list[Entry], expected: Reconciled | None
) -> None:
    assert reconcile(*prev, entries, TERMS.get) == expected
