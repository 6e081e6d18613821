"""DescribeConfigs and IncrementalAlterConfigs for topics, and describing this broker.

Topic configs are altered as a whole: the operations of a resource are applied to its
current overrides, the result is validated like a new topic's configs, and only then
stored and handed to the topic's partition logs. Broker settings are static (flags and
``BROOK_*`` variables), so they can be described but not altered.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from ..metadata.errors import ApiError
from ..metadata.model import TopicState
from ..metadata.topic_config import (
    ConfigEntry,
    ConfigType,
    config_key,
    describe_broker,
    describe_topic,
    effective_value,
)
from ..metadata.topics import validate_topic_name
from ..protocol.codec import Request
from .context import ApiContext
from .errors import count_error

TOPIC_RESOURCE = 2
BROKER_RESOURCE = 4

SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3


async def describe_configs(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    include_synonyms = body.include_synonyms
    include_documentation = getattr(body, "include_documentation", False)
    results = []
    for resource in body.resources:
        result: dict[str, Any] = {
            "error_code": ErrorCode.none,
            "error_message": None,
            "resource_type": resource.resource_type,
            "resource_name": resource.resource_name,
            "configs": [],
        }
        try:
            entries = _describe(
                context, resource.resource_type, resource.resource_name, include_synonyms
            )
        except ApiError as error:
            count_error(request, error.code)
            result.update(error_code=error.code, error_message=error.message)
        else:
            wanted = set(resource.configuration_keys or ())
            result["configs"] = [
                _config(entry, include_documentation)
                for entry in entries
                if not wanted or entry.name in wanted
            ]
        results.append(result)
    return {"results": results}


async def incremental_alter_configs(context: ApiContext, request: Request) -> Mapping[str, Any]:
    body = request.body
    counts = Counter(
        (resource.resource_type, resource.resource_name) for resource in body.resources
    )
    responses = []
    for resource in body.resources:
        response: dict[str, Any] = {
            "error_code": ErrorCode.none,
            "error_message": None,
            "resource_type": resource.resource_type,
            "resource_name": resource.resource_name,
        }
        try:
            if counts[(resource.resource_type, resource.resource_name)] > 1:
                raise ApiError(
                    ErrorCode.invalid_request,
                    f"Resource {resource.resource_name} appears more than once in the request",
                )
            if resource.resource_type == BROKER_RESOURCE:
                raise ApiError(
                    ErrorCode.invalid_request,
                    "Broker settings are static: set them with the broker's flags or "
                    "BROOK_* environment variables and restart it",
                )
            if resource.resource_type != TOPIC_RESOURCE:
                raise ApiError(
                    ErrorCode.invalid_request,
                    f"Unsupported resource type {resource.resource_type}",
                )
            topic = _topic(context, resource.resource_name)
            overrides = _apply(context, topic, resource.configs)
            await context.alter_configs(topic.name, overrides, validate_only=body.validate_only)
        except ApiError as error:
            count_error(request, error.code)
            response.update(error_code=error.code, error_message=error.message)
        responses.append(response)
    return {"responses": responses}


def _describe(
    context: ApiContext, resource_type: int, resource_name: str, include_synonyms: bool
) -> list[ConfigEntry]:
    if resource_type == TOPIC_RESOURCE:
        topic = _topic(context, resource_name)
        return describe_topic(topic.configs, context.config, include_synonyms)
    if resource_type == BROKER_RESOURCE:
        node_id = context.config.node_id
        if resource_name not in ("", str(node_id)):
            raise ApiError(
                ErrorCode.invalid_request,
                f"Unexpected broker id, expected {node_id} or empty string, but received "
                f"{resource_name}",
            )
        return describe_broker(context.config, include_synonyms)
    raise ApiError(ErrorCode.invalid_request, f"Unsupported resource type {resource_type}")


def _topic(context: ApiContext, name: str) -> TopicState:
    validate_topic_name(name)
    topic = context.topics.get(name)
    if topic is None:
        raise ApiError(ErrorCode.unknown_topic_or_partition, f"Topic {name} does not exist")
    return topic


def _apply(context: ApiContext, topic: TopicState, operations: Any) -> dict[str, str]:
    """The topic's overrides after SET, DELETE, APPEND and SUBTRACT (not yet validated)."""
    names = Counter(operation.name for operation in operations)
    duplicated = sorted(name for name, count in names.items() if count > 1)
    if duplicated:
        raise ApiError(
            ErrorCode.invalid_request, f"Error due to duplicate config keys: {duplicated}"
        )
    overrides = dict(topic.configs)
    for operation in operations:
        name, value, kind = operation.name, operation.value, operation.config_operation
        key = config_key(name)
        if kind == DELETE:
            overrides.pop(name, None)
            continue
        if kind not in (SET, APPEND, SUBTRACT):
            raise ApiError(ErrorCode.invalid_request, f"Unknown config operation {kind} for {name}")
        if value is None:
            raise ApiError(ErrorCode.invalid_config, f"Null value not supported for: {name}")
        if kind == SET:
            overrides[name] = value
            continue
        if key.type != ConfigType.LIST:
            verb = "append" if kind == APPEND else "subtract"
            raise ApiError(
                ErrorCode.invalid_config,
                f"Config value {verb} is not allowed for config key: {name}",
            )
        current = [
            item for item in effective_value(name, overrides, context.config).split(",") if item
        ]
        given = [item.strip() for item in value.split(",") if item.strip()]
        if kind == APPEND:
            current += [item for item in given if item not in current]
        else:
            current = [item for item in current if item not in given]
        overrides[name] = ",".join(current)
    return overrides


def _config(entry: ConfigEntry, include_documentation: bool) -> dict[str, Any]:
    return {
        "name": entry.name,
        "value": entry.value,
        "read_only": entry.read_only,
        "config_source": entry.source,
        "is_sensitive": False,
        "synonyms": [
            {"name": synonym.name, "value": synonym.value, "source": synonym.source}
            for synonym in entry.synonyms
        ],
        "config_type": entry.type,
        "documentation": entry.documentation if include_documentation else None,
    }
