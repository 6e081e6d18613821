"""Kafka API handlers: one module per API family, routed by the dispatcher."""
