"""Partition logs on disk: segments of raw v2 record batches with offset and time indexes."""
