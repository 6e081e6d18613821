"""Consumer groups: the classic group protocol's coordinator and committed offsets.

``group`` holds one group's members and state, ``coordinator`` runs the protocol for the
groups this broker coordinates (those whose ``__consumer_offsets`` partition it leads),
and ``offsets_topic`` is what is written to that partition and read back after a
coordinator failover.
"""
