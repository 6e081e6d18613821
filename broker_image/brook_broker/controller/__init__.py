"""The controller: the active controller's duties (on voters) and every broker's side of
them (registration, heartbeats, controlled shutdown)."""
