"""Brook's CRDs as an API server reads them: each kind's schema, its defaults,
validation that refuses unknown fields the way ``kubectl apply --validate=strict`` does,
and the CEL rules (``x-kubernetes-validations``), evaluated with cel-python.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

REPOSITORY = Path(__file__).resolve().parents[2]
CRDS_DIRECTORY = REPOSITORY / "crds"
EXAMPLES_DIRECTORY = REPOSITORY / "examples"

Schema = dict[str, Any]


def crd_files() -> list[Path]:
    return sorted(CRDS_DIRECTORY.glob("*.yaml"))


def load_crds() -> dict[str, dict[str, Any]]:
    """Each CRD by its kind."""
    crds = [yaml.safe_load(path.read_text()) for path in crd_files()]
    return {crd["spec"]["names"]["kind"]: crd for crd in crds}


def served_schema(crd: dict[str, Any], version: str = "v1alpha1") -> Schema:
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(f"{crd['metadata']['name']} serves no version {version}")


def _children(schema: Schema) -> Iterator[tuple[str, Schema]]:
    for name, child in schema.get("properties", {}).items():
        yield f".{name}", child
    if isinstance(schema.get("items"), dict):
        yield "[]", schema["items"]
    if isinstance(schema.get("additionalProperties"), dict):
        yield ".*", schema["additionalProperties"]


def walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every node of a schema with its path, e.g. ``.spec.config.*`` or ``.status.partitions[]``."""
    yield path, schema
    for suffix, child in _children(schema):
        yield from walk(child, path + suffix)


def apply_defaults(schema: Schema, value: Any) -> Any:
    """A copy of ``value`` with the schema's defaults filled in where fields are absent
    (or null without ``nullable``), top-down, as the API server defaults on admission."""
    if isinstance(value, dict):
        result = dict(value)
        for name, child in schema.get("properties", {}).items():
            absent = result.get(name) is None and not (name in result and child.get("nullable"))
            if absent and "default" in child:
                result[name] = copy.deepcopy(child["default"])
            if name in result:
                result[name] = apply_defaults(child, result[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in result.keys() - schema.get("properties", {}).keys():
                result[name] = apply_defaults(extra, result[name])
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def strict_json_schema(schema: Schema) -> Schema:
    """The OpenAPI schema as plain JSON Schema: ``nullable`` as a null type, and objects
    closed to fields they do not declare (unless they preserve unknown fields)."""
    converted = {key: value for key, value in schema.items() if not key.startswith("x-")}
    if schema.get("x-kubernetes-int-or-string"):
        converted["type"] = ["integer", "string"]
    if schema.get("nullable") and "type" in converted:
        converted["type"] = [converted["type"], "null"]
    if "properties" in schema:
        converted["properties"] = {
            name: strict_json_schema(child) for name, child in schema["properties"].items()
        }
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            converted["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        converted["additionalProperties"] = strict_json_schema(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        converted["items"] = strict_json_schema(schema["items"])
    return converted


def validation_errors(crd: dict[str, Any], resource: dict[str, Any]) -> list[str]:
    """Why the API server would refuse ``resource`` (after defaulting), as ``path: message``."""
    schema = served_schema(crd)
    validator = jsonschema.Draft7Validator(strict_json_schema(schema))
    defaulted = apply_defaults(schema, resource)
    return sorted(
        f"{error.json_path}: {error.message}" for error in validator.iter_errors(defaulted)
    )


def _rules(schema: Schema, value: Any, old: Any, path: str) -> Iterator[tuple[str, dict, Any, Any]]:
    """Each rule with the value (and old value) it judges; a rule judges only fields that
    are present, and a transition rule (one naming ``oldSelf``) only updated ones."""
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" not in rule["rule"] or old is not None:
            yield path or ".", rule, value, old
    if isinstance(value, dict):
        old_fields = old if isinstance(old, dict) else {}
        for name, child in schema.get("properties", {}).items():
            if name in value:
                yield from _rules(child, value[name], old_fields.get(name), f"{path}.{name}")


def cel_errors(
    crd: dict[str, Any], resource: dict[str, Any], old: dict[str, Any] | None = None
) -> list[str]:
    """The messages of the CEL rules that refuse ``resource`` (an update of ``old``)."""
    schema = served_schema(crd)
    new_value = apply_defaults(schema, resource)
    old_value = apply_defaults(schema, old) if old is not None else None
    environment = celpy.Environment()
    errors = []
    for path, rule, value, old_field in _rules(schema, new_value, old_value, ""):
        program = environment.program(environment.compile(rule["rule"]))
        activation = {"self": celpy.json_to_cel(value)}
        if old_field is not None:
            activation["oldSelf"] = celpy.json_to_cel(old_field)
        result = program.evaluate(activation)
        if not isinstance(result, celpy.celtypes.BoolType):
            raise AssertionError(f"{path}: rule {rule['rule']!r} gave {result!r}, not a bool")
        if not result:
            errors.append(f"{path}: {rule['message'].strip()}")
    return errors


def admitted(crd: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as stored: defaulted, or an AssertionError naming every refused field."""
    errors = validation_errors(crd, resource)
    assert not errors, f"{resource['kind']} {resource['metadata']['name']} refused: {errors}"
    return apply_defaults(served_schema(crd), resource)
