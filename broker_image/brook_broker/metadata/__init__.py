"""Cluster metadata of this broker: topics, their configs, producer ids."""
