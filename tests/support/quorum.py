"""A metadata quorum of one without Raft, for tests that drive handlers or replicas.

Commands run at once on a plain ClusterState, exactly as the Raft state machine would
run them, and the change listener is called after each, so handlers, the replica manager
and the controller see what they would see on a lone broker, with no sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from brook_broker.metadata.cluster_state import ClusterState
from brook_broker.metadata.commands import Command

Result = TypeVar("Result")


class LocalQuorum:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.state = ClusterState()
        self.on_change: Callable[[], None] = lambda: None
        self.applied_offset = 0
        self.is_voter = True
        self.is_active_controller = True
        self.voters = {node_id: "127.0.0.1:0"}
        self.unreachable_voters: set[int] = set()

    @property
    def active_controller_id(self) -> int | None:
        return self.node_id if self.is_active_controller else None

    async def submit(self, command: Command[Result], *, timeout: float = 10.0) -> Result:
        try:
            return self.state.apply(command)
        finally:
            self.applied_offset += 1
            self.on_change()
