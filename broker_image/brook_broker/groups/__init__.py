"""Consumer groups: the classic group protocol's coordinator and committed offsets.

``coordinator`` is the thin group coordinator: it loads and unloads the groups of the
``__consumer_offsets`` partitions this broker leads and composes one manager per kind of
state over them (``coordinated`` is what they share): ``group_metadata`` runs the
classic membership protocol, ``offset_metadata`` commits, fetches, deletes and expires
offsets. ``group`` holds one group's members and state, and ``offsets_topic`` is what is
written to that partition and read back after a coordinator failover.
"""
