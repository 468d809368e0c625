"""Validation of v2 request bodies against Bandwidth's official OpenAPI spec, the copy shipped in
the package (``shim/data/messaging-v2.yml``): the sandbox, dry-run and the tests all use it."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

SPEC_URI = "urn:bandwidth:messaging-v2"


@cache
def load_spec() -> dict[str, Any]:
    text = resources.files("shim.data").joinpath("messaging-v2.yml").read_text("utf-8")
    spec: dict[str, Any] = yaml.safe_load(text)
    return spec


@cache
def validator(schema_name: str) -> OAS30Validator:
    registry: Registry[Any] = Registry().with_resource(
        SPEC_URI, Resource.from_contents(load_spec(), default_specification=DRAFT4)
    )
    schema = {"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}
    return OAS30Validator(schema, registry=registry, format_checker=OAS30Validator.FORMAT_CHECKER)


def message_request_errors(body: Any) -> list[ValidationError]:
    """All reasons ``body`` is not a valid ``messageRequest`` (empty when valid)."""
    return sorted(validator("messageRequest").iter_errors(body), key=lambda e: list(e.path))
