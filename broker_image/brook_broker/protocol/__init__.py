"""Kafka's binary protocol: framing over asyncio TCP, request decoding, response encoding."""
