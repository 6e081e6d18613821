"""The metadata quorum: ClusterState replicated by Raft (pysyncobj), ticked by the event loop.

Brokers named in ``--controller-quorum`` are voters; every other broker is a read-only
observer that receives the same log. Commands submitted anywhere are forwarded by
pysyncobj to the Raft leader, appended, committed by a majority of the voters and then
applied on every node, in log order. pysyncobj's timer thread is off: a task of the
event loop ticks it, so commands are applied and callbacks run on the loop thread and
nothing needs a lock. The journal and the snapshot ("dump") live in the metadata
directory, so a restarted broker rebuilds its state from disk and then catches up; the
journal holds the ``commands`` pickled (that module says what may change in them).
``RaftMember`` corrects how pysyncobj's followers take AppendEntries (see ``raft``), and
``state_digest`` lets every member show that it holds the same state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from kio.schema.errors import ErrorCode
from pysyncobj import (
    FAIL_REASON,
    SyncObjConf,
    SyncObjConsumer,
    SyncObjException,
    replicated,
)
from pysyncobj.node import Node
from pysyncobj.transport import TCPTransport, Transport

from .cluster_state import ClusterState
from .commands import Command
from .digest import digest
from .errors import ApiError
from .raft import RaftMember

log = logging.getLogger(__name__)

TICK_SECONDS = 0.01
"""How often pysyncobj gets to read its sockets, send heartbeats and apply commands."""

JOURNAL_FILE = "raft.journal"
SNAPSHOT_FILE = "raft.dump"
Result = TypeVar("Result")
_LEADER_HANDOVER_SECONDS = 2.0
_MEMBERSHIP_RETRY_SECONDS = 0.05


def _raft_conf(
    directory: Path, listen: str | None, lone: bool, password: str | None = None
) -> SyncObjConf:
    """Timeouts tuned for a failover within about a second (pysyncobj's defaults are
    several seconds): a silent leader is replaced after 0.5-1.0 s, and a leader that no
    longer hears a majority steps down after 1.5 s instead of 30. A quorum of one, which
    never grows, elects itself as soon as it may."""
    election = (0.2, 0.25) if lone else (0.5, 1.0)
    return SyncObjConf(
        autoTick=False,
        raftMinTimeout=election[0],
        raftMaxTimeout=election[1],
        appendEntriesPeriod=0.05,
        appendEntriesUseBatch=False,
        leaderFallbackTimeout=1.5,
        connectionTimeout=2.0,
        connectionRetryTime=0.5,
        commandsWaitLeader=True,
        dynamicMembershipChange=not lone,
        journalFile=str(directory / JOURNAL_FILE),
        fullDumpFile=str(directory / SNAPSHOT_FILE),
        # Forking a process that runs an event loop and thread pools is not safe; the
        # snapshot is small enough to write between two ticks.
        useFork=False,
        bindAddress=listen,
        maxBindRetries=1,
        # Encrypts and authenticates every message between members (Fernet, a key
        # derived from the cluster secret): a node without the secret cannot take part,
        # and nothing it sends is unpickled.
        password=password,
    )


class _Alone(Transport):
    """The transport of a quorum of one: there is nobody to talk to, so nothing listens."""

    def send(self, node: Node, message: Any) -> bool:
        return False


class _StateMachine(SyncObjConsumer):
    """What Raft replicates: the ClusterState, and the addresses of voters added at runtime.

    Attributes set before ``SyncObjConsumer.__init__`` are not part of the snapshot.
    """

    def __init__(self, applied: Callable[[], None]) -> None:
        self._applied = applied
        self._digest: int | None = None
        super().__init__()
        self.state = ClusterState()
        self.voter_addresses: dict[int, str] = {}
        """Raft addresses of voters added after the configured quorum, by node id. Who
        votes is Raft's own membership; this only names its members."""

    @replicated
    def execute(self, command: Command[Any]) -> tuple[Any, ...]:
        """Apply one metadata command; an ApiError becomes part of the outcome, so the
        submitting broker can raise it again."""
        try:
            return ("ok", self.state.apply(command))
        except ApiError as error:
            return ("error", error.code, error.message)
        except Exception:
            # A bug, and the same one on every node: refuse rather than stop applying.
            name = type(command).__name__
            log.exception("metadata command %s failed", name)
            return ("error", ErrorCode.unknown_server_error, f"{name} failed")
        finally:
            self._digest = None
            self._applied()

    @replicated
    def name_voter(self, node_id: int, address: str) -> None:
        self.voter_addresses[node_id] = address
        self._digest = None

    def _deserialize(self, data: Mapping[str, Any]) -> None:
        super()._deserialize(data)
        self._digest = None
        self._applied()

    @property
    def digest(self) -> int:
        """``metadata.digest`` of everything replicated, computed again only after a change."""
        if self._digest is None:
            self._digest = digest((self.state, self.voter_addresses))
        return self._digest


class MetadataQuorum:
    """One broker's member of the metadata quorum: a voter when ``self_address`` is
    given, else a read-only observer of ``voters``."""

    def __init__(
        self,
        node_id: int,
        voters: Mapping[int, str],
        self_address: str | None,
        directory: Path,
        on_change: Callable[[], None],
        *,
        listen: str | None = None,
        lone: bool = False,
        password: str | None = None,
    ) -> None:
        """``lone``: a quorum of one that never grows (a broker without
        ``--controller-quorum``): it opens no port, elects itself at once and refuses voter
        changes; its address is only a name."""
        self.node_id = node_id
        self._configured_voters = dict(voters)
        self._self_address = self_address
        self._directory = directory
        self._on_change = on_change
        self._listen = listen or self_address
        self._lone = lone
        self._password = password
        self._machine = _StateMachine(self._applied)
        self._raft: RaftMember | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the journal, join the quorum, and return once this node has applied
        everything the leader has committed, up to an entry of the leader's term (a lone
        voter: once it elected itself and applied its own first entry)."""
        self._directory.mkdir(parents=True, exist_ok=True)
        others = [
            address for address in self._configured_voters.values() if address != self._self_address
        ]
        conf = _raft_conf(self._directory, self._listen, self._lone, self._password)
        transport = _Alone if self._lone else TCPTransport
        try:
            self._raft = RaftMember(
                self._self_address,
                others,
                conf=conf,
                consumers=[self._machine],
                transportClass=transport,
            )
        except SyncObjException as error:
            raise OSError(f"cannot listen for the metadata quorum on {self._listen}") from error
        self._ticker = asyncio.create_task(self._tick(), name="metadata quorum")
        role = "voter" if self._self_address is not None else "observer"
        log.info("joining the metadata quorum", extra={"role": role, "voters": others})
        # pysyncobj is "ready" at the commit index the leader sends, which may be one it
        # persisted before a restart: the logs of topics created after it would be taken
        # for those of deleted topics and removed.
        while not (self._raft.isReady() and self._raft.applied_current_term()):
            if self._ticker.done():
                self._ticker.result()
            await asyncio.sleep(TICK_SECONDS)
        log.info(
            "metadata caught up",
            extra={"applied": self._raft.raftLastApplied, "controller": self.active_controller_id},
        )

    async def stop(self) -> None:
        """Hand Raft leadership to another voter if this one leads, then leave."""
        if self._raft is None:
            return
        await self._hand_over()
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        for future in self._pending:
            if not future.done():
                future.set_exception(ApiError(ErrorCode.not_controller, "broker shutting down"))
        self._raft.destroy()
        self._raft = None

    async def _tick(self) -> None:
        raft = self._raft
        assert raft is not None
        while True:
            try:
                raft.doTick(0)
            except Exception:
                log.exception("metadata quorum tick failed")
            await asyncio.sleep(TICK_SECONDS)

    def _applied(self) -> None:
        try:
            self._on_change()
        except Exception:
            # Raft must keep applying; the listener reconciles again on the next change.
            log.exception("metadata change listener failed")

    # --- reads -------------------------------------------------------------------------

    @property
    def state(self) -> ClusterState:
        """Read-only for callers; replaced as a whole when a snapshot is loaded."""
        return self._machine.state

    @property
    def voters(self) -> dict[int, str]:
        """Voter node ids and their Raft addresses, as Raft's membership has them now."""
        if self._raft is None:
            return dict(self._configured_voters)
        members = {node.address for node in self._raft.otherNodes}
        if self._raft.selfNode is not None:
            members.add(self._raft.selfNode.address)
        named = {**self._configured_voters, **self._machine.voter_addresses}
        return {node_id: address for node_id, address in named.items() if address in members}

    @property
    def unreachable_voters(self) -> set[int]:
        """Voters this node has no Raft connection to: most likely their process is gone."""
        if self._raft is None:
            return set()
        raft = self._raft
        down = {node.address for node in raft.otherNodes if not raft.isNodeConnected(node)}
        return {node_id for node_id, address in self.voters.items() if address in down}

    @property
    def is_voter(self) -> bool:
        return self._self_address is not None

    @property
    def is_active_controller(self) -> bool:
        return self._raft is not None and self._raft._isLeader()

    @property
    def active_controller_id(self) -> int | None:
        """The voter that leads Raft, as far as this node knows (it can be out of date)."""
        if self._raft is None:
            return None
        leader = self._raft._getLeader()
        if leader is None:
            return None
        for node_id, address in self.voters.items():
            if address == leader.address:
                return node_id
        return None

    @property
    def applied_offset(self) -> int:
        """The index of the last applied Raft entry: the broker's metadata offset."""
        return 0 if self._raft is None else int(self._raft.raftLastApplied)

    @property
    def state_digest(self) -> int:
        """A 52-bit digest of the replicated state (``metadata.digest``): members that
        have applied the same entries show the same digest."""
        return self._machine.digest

    # --- changes -----------------------------------------------------------------------

    async def submit(self, command: Command[Result], *, timeout: float = 10.0) -> Result:
        """Apply ``command`` through Raft and return its result once it is applied here;
        its ApiError is raised again here."""
        outcome = await self._replicate(
            lambda callback: self._machine.execute(command, callback=callback), timeout
        )
        if outcome[0] == "error":
            raise ApiError(outcome[1], outcome[2])
        result: Result = outcome[1]
        return result

    async def add_voter(self, node_id: int, address: str, timeout: float = 10.0) -> None:
        """Make the broker at Raft ``address`` a voter (it must already run as one, with
        this quorum's voters and itself in its ``--controller-quorum``)."""
        self._require_dynamic_membership()
        voters = self.voters
        if node_id in voters:
            raise ApiError(ErrorCode.duplicate_voter, f"Node {node_id} is already a voter")
        if address in voters.values():
            raise ApiError(ErrorCode.duplicate_voter, f"{address} is already a voter's address")
        raft = self._require_raft()
        await self._replicate(
            lambda callback: self._machine.name_voter(node_id, address, callback=callback),
            timeout,
        )
        await self._change_membership(
            lambda callback: raft.addNodeToCluster(address, callback=callback),
            lambda: address in self.voters.values(),
            timeout,
        )

    async def remove_voter(self, node_id: int, timeout: float = 10.0) -> None:
        """Take another voter out of the quorum. Asked to remove itself, the active
        controller hands its role to another voter and answers NOT_CONTROLLER, so the
        client retries with the new one (as Kafka clients do)."""
        self._require_dynamic_membership()
        voters = self.voters
        address = voters.get(node_id)
        if address is None:
            raise ApiError(ErrorCode.voter_not_found, f"Node {node_id} is not a voter")
        if len(voters) == 1:
            raise ApiError(ErrorCode.invalid_request, "The last voter cannot be removed")
        raft = self._require_raft()
        if address == self._self_address:
            # The leader drops a leaving voter's connections as soon as it appends the
            # change, so the leaving voter can never learn the outcome: another must ask.
            await self._hand_over()
            raise ApiError(
                ErrorCode.not_controller,
                f"Node {node_id} is leaving the quorum: send its removal to the active "
                "controller, which this node no longer is",
            )
        if node_id == self.active_controller_id and not raft._isLeader():
            raise ApiError(
                ErrorCode.not_controller,
                f"Node {node_id} is the active controller: send the removal to it",
            )
        await self._change_membership(
            lambda callback: raft.removeNodeFromCluster(address, callback=callback),
            lambda: address not in self.voters.values(),
            timeout,
        )

    async def _change_membership(
        self,
        send: Callable[[Callable[[Any, int], None]], None],
        done: Callable[[], bool],
        timeout: float,
    ) -> None:
        """Raft takes one membership change at a time, and none before a new leader has
        committed an entry of its own: a refusal is retried until ``timeout``. A change
        forwarded to a leader that changed meanwhile has an unknown outcome: it counts as
        done once this node's view of the membership shows it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self._replicate(send, max(deadline - time.monotonic(), TICK_SECONDS))
                return
            except _MembershipDenied:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(_MEMBERSHIP_RETRY_SECONDS)
            except ApiError as error:
                if error.code != ErrorCode.not_controller:
                    raise
                handover = time.monotonic() + _LEADER_HANDOVER_SECONDS
                while not done():
                    if time.monotonic() > handover:
                        raise
                    await asyncio.sleep(TICK_SECONDS)
                return

    async def _hand_over(self) -> None:
        """If this node leads, ask the most caught-up voter to take over (Raft's
        TimeoutNow) and wait, bounded, until it has."""
        raft = self._require_raft()
        if not raft._isLeader():
            return
        answer: list[int] = []
        raft.transferLeadership(callback=lambda _, failure: answer.append(failure))
        if answer != [FAIL_REASON.SUCCESS]:
            return  # no voter is connected and caught up
        deadline = time.monotonic() + _LEADER_HANDOVER_SECONDS
        while raft._isLeader() and time.monotonic() < deadline:
            await asyncio.sleep(TICK_SECONDS)

    def _require_raft(self) -> RaftMember:
        if self._raft is None:
            raise ApiError(ErrorCode.not_controller, "The metadata quorum is not running")
        return self._raft

    def _require_dynamic_membership(self) -> None:
        if self._lone:
            raise ApiError(
                ErrorCode.invalid_request,
                "This broker runs a quorum of one; start brokers with --controller-quorum "
                "to change voters",
            )

    async def _replicate(
        self, send: Callable[[Callable[[Any, int], None]], None], timeout: float
    ) -> Any:
        """Hand one entry to pysyncobj and wait for its outcome on this node."""
        self._require_raft()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(result: Any, failure: int) -> None:
            if future.done():
                return
            if failure == FAIL_REASON.SUCCESS:
                future.set_result(result)
            else:
                future.set_exception(_failure(failure))

        self._pending.add(future)
        try:
            send(done)
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            if self.active_controller_id is None:
                raise ApiError(
                    ErrorCode.not_controller, "No active controller: the quorum has no leader"
                ) from None
            raise ApiError(
                ErrorCode.request_timed_out,
                f"The metadata quorum did not commit the change within {timeout:g} s",
            ) from None
        finally:
            self._pending.discard(future)


class _MembershipDenied(ApiError):
    """Raft refused a membership change for now (another is still being committed)."""


def _failure(reason: int) -> ApiError:
    if reason == FAIL_REASON.REQUEST_DENIED:
        return _MembershipDenied(
            ErrorCode.request_timed_out,
            "The quorum did not take the membership change: another one is still in progress",
        )
    if reason == FAIL_REASON.QUEUE_FULL:
        return ApiError(ErrorCode.request_timed_out, "Too many metadata changes are waiting")
    # MISSING_LEADER, NOT_LEADER, LEADER_CHANGED, DISCARDED, UNKNOWN_OUTCOME: the change
    # may or may not have been applied; the client retries against the new controller.
    return ApiError(ErrorCode.not_controller, "The active controller changed; retry")
