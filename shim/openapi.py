"""Validation of v2 request bodies against Bandwidth's official OpenAPI spec.

The sandbox uses the packaged copy (``shim/data/messaging-v2.yml``); tests also validate
against ``shared/reference/messaging-v2.yml`` and check both copies are identical.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

SPEC_URI = "urn:bandwidth:messaging-v2"


@cache
def load_spec(path: str | None = None) -> dict[str, Any]:
    if path is None:
        text = resources.files("shim.data").joinpath("messaging-v2.yml").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    spec: dict[str, Any] = yaml.safe_load(text)
    return spec


def validator(schema_name: str, spec_path: str | None = None) -> OAS30Validator:
    spec = load_spec(spec_path)
    registry: Registry[Any] = Registry().with_resource(
        SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT4)
    )
    schema = {"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}
    return OAS30Validator(schema, registry=registry, format_checker=OAS30Validator.FORMAT_CHECKER)


def message_request_errors(body: Any, spec_path: str | None = None) -> list[ValidationError]:
    """All reasons ``body`` is not a valid ``messageRequest`` (empty when valid)."""
    v = _cached_validator("messageRequest", spec_path)
    return sorted(v.iter_errors(body), key=lambda e: list(e.path))


@cache
def _cached_validator(name: str, spec_path: str | None) -> OAS30Validator:
    return validator(name, spec_path)
