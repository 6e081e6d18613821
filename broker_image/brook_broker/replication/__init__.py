"""Replication: leaders, followers, the high watermark and the ISR of this broker's replicas.

How the broker hooks it up (``broker.py``)::

    quorum = MetadataQuorum(..., on_change=...)  # on_change calls on_metadata_change below
    await quorum.start()                         # the metadata has caught up
    logs = LogManager(config.data_dir)           # nothing opened yet: start() opens the logs
    replicas = ReplicaManager(config.node_id, config, logs, quorum)
    await replicas.start()                       # opens the logs of replicas assigned here,
                                                 # removes the others, takes up every role
    groups = GroupCoordinator.for_broker(config, quorum, replicas)
    context = ApiContext(config, quorum, logs, replicas, groups, controller)
    ...
    await replicas.stop()                        # after the listener stopped, before the
    logs.close()                                 # logs are closed

``on_metadata_change`` must be called (on the event loop) after every change the quorum
applies; it never waits, and it is a no-op before ``start`` (which reconciles anyway).
The ReplicaManager owns the partition logs' lifecycle: it creates and deletes them as
the metadata assigns replicas, and applies topic config changes to them; nothing else
should create or delete logs. It is also the front door of appends and fetches: the
Produce and Fetch handlers and the group coordinator's offsets log call
``append_records`` and ``fetch_records``, and the other partition-level handlers reach a
replica this broker leads with ``leader_partition(topic, index, current_leader_epoch)``.
"""

from .manager import ReplicaManager
from .partition import Partition, Role

__all__ = ["Partition", "ReplicaManager", "Role"]
