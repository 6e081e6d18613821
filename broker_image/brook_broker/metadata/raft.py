"""pysyncobj's ``SyncObj`` with a follower that keeps the log entries it already holds.

Raft's AppendEntries receiver deletes its entries only from the first one that
*conflicts* with the leader's (same index, other term), and commits at most up to the
last entry the request carried (Raft paper, Figure 2, receiver rules 3 and 5).
pysyncobj 0.3.17 instead deletes everything after the request's previous entry whenever
it holds more (``SyncObj.__onMessageReceived``, the ``len(prevEntries) > 1`` branch),
then appends what the request carried.

A leader sends AppendEntries without waiting for answers, and rewinds its ``nextIndex``
on every refusal, also on the refusal of a request that a later one has superseded. So a
follower that has just caught up (a paused member that comes back) receives entries it
already holds, has applied and answered for, and pysyncobj deleted them ("truncating
already-applied log entries ... may have diverged"). When such a request carries fewer
entries than the follower held, the follower's log ends before entries that the leader
counts as stored on it; with the leader gone, a majority without a committed entry could
elect a new leader, and members would apply different commands at the same index.

``RaftMember`` looks at each AppendEntries before pysyncobj does and hands it on with
only the entries that are new or conflicting, so pysyncobj deletes only from the first
conflict. A request whose entries are all held already, with more held after them, is
answered here as Raft answers it: success up to its last entry, nothing deleted, and a
commit index no higher than that entry. Everything else stays pysyncobj's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pysyncobj import SyncObj
from pysyncobj import pickle as raft_pickle
from pysyncobj.node import Node

Entry = tuple[bytes, int, int]
"""A Raft log entry as pysyncobj has it: (command, index, term)."""


@dataclass(frozen=True)
class Reconciled:
    """What of an AppendEntries a follower's log still needs."""

    prev_index: int
    prev_term: int
    """The entry the remaining ones follow (the request's own previous entry, or the last
    entry it carried that the log already holds)."""
    entries: list[Entry]
    """From the first entry the log does not hold, or holds with another term, on."""
    holds_more: bool
    """The log holds every entry sent and more after them: nothing to append or delete."""


def reconcile(
    prev_index: int,
    prev_term: int,
    entries: Sequence[Entry],
    term_at: Callable[[int], int | None],
) -> Reconciled | None:
    """Compare an AppendEntries with the log (``term_at(index)``: the term of the entry
    held at ``index``, None if none); None when the log does not hold the request's
    previous entry, which the follower refuses as it would anyway."""
    if term_at(prev_index) != prev_term:
        return None
    held = 0
    for _, index, term in entries:
        if term_at(index) != term:
            break
        held += 1
    if held:
        _, prev_index, prev_term = entries[held - 1]
    remaining = list(entries[held:])
    holds_more = not remaining and term_at(prev_index + 1) is not None
    return Reconciled(prev_index, prev_term, remaining, holds_more)


class RaftMember(SyncObj):
    """A ``SyncObj`` whose AppendEntries handling deletes only conflicting entries."""

    _SyncObj__recvTransmission: bytes | str
    """pysyncobj's buffer for an entry sent in pieces: the pickled bytes so far, "" between
    entries."""

    def _SyncObj__onMessageReceived(self, node: Node, message: dict[str, Any]) -> None:
        """Overrides pysyncobj's handler of every message from another member (its name is
        pysyncobj's private name, so pysyncobj's own calls reach it)."""
        if (
            message.get("type") == "append_entries"
            and "prevLogIdx" in message
            and message["term"] >= self.raftCurrentTerm
            and message.get("transmission") in (None, "finish")
        ):
            if message.get("transmission") == "finish":
                message = self._assembled(message)
            reconciled = reconcile(
                message["prevLogIdx"], message["prevLogTerm"], message["entries"], self._term_at
            )
            if reconciled is not None and reconciled.holds_more:
                self._acknowledge_held(node, message, reconciled.prev_index)
                return
            if reconciled is not None:
                message = {
                    **message,
                    "prevLogIdx": reconciled.prev_index,
                    "prevLogTerm": reconciled.prev_term,
                    "entries": reconciled.entries,
                }
        super()._SyncObj__onMessageReceived(node, message)

    def _assembled(self, message: dict[str, Any]) -> dict[str, Any]:
        """The last piece of an entry too large for one message, as a request carrying
        that entry (pysyncobj joins the pieces the same way)."""
        data = self._SyncObj__recvTransmission + message["data"]
        self._SyncObj__recvTransmission = ""
        pieces = ("transmission", "data")
        whole = {key: value for key, value in message.items() if key not in pieces}
        return {**whole, "entries": [raft_pickle.loads(data)]}

    def _acknowledge_held(self, node: Node, message: dict[str, Any], last_sent: int) -> None:
        """Answer a request whose entries are all held: pysyncobj takes the leader's term,
        leadership and commit index from it (capped at the last entry sent, which is all
        the request proves to match the leader's log), and the leader learns that the log
        matches up to that entry."""
        super()._SyncObj__onMessageReceived(
            node,
            {
                "type": "append_entries",
                "term": message["term"],
                "commit_index": min(message["commit_index"], last_sent),
            },
        )
        self._SyncObj__sendNextNodeIdx(node, nextNodeIdx=last_sent + 1, success=True)

    def applied_current_term(self) -> bool:
        """Whether this member has applied an entry of the current term (at least the
        no-op a leader appends when elected). Only then has it applied every entry that
        was committed before: a leader learns of its predecessors' commits only when it
        commits an entry of its own term (Raft paper, 5.4.2), and until then it and its
        followers take the commit index it had persisted, which after a restart of all
        members can be older than commands that clients were answered for."""
        current_term: int = self.raftCurrentTerm
        return self._term_at(self.raftLastApplied) == current_term

    def _term_at(self, index: int) -> int | None:
        entries = self._SyncObj__getEntries(index, 1)
        return int(entries[0][2]) if entries else None
