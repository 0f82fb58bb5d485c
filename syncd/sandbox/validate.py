"""Checks every request the sandbox receives against Zoho's OpenAPI specs (``oas/``, unchanged).

What is checked: the path (after ``/crm/{version}``), the method, required query parameters
and their types and enums, and JSON bodies (required keys, types, enums, lengths, date-times).
What is not, because the specs are wrong there (see the README next to the shared copy):
every ``pattern`` (sample-derived, e.g. ``[a-z]{7}[@]zoho[.]com`` for emails), ``linked_record``
being required, ``per_page`` / ``owner_id`` being required, ``file`` parts typed as objects.
Where the doc is stricter than the spec (``subject``, ``content`` mandatory) the doc wins.
The Link/Unlink Deal endpoints are not in the specs; their shapes come from the Kaizen post.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from importlib import resources
from typing import Any

import jsonschema
from jsonschema import validators
from referencing import Registry
from referencing.jsonschema import DRAFT4

SPEC_PREFIX = "https://raw.githubusercontent.com/Zohocorp-Pvt-Ltd/crm-oas/refs/heads/main/v8.0/"
"""Cross-file ``$ref``s name this prefix; the registry serves our copies under it."""

# Files whose paths are served, most specific first: on equal paths the first file wins.
_ENDPOINT_FILES = (
    "associate_email.json",
    "email_related_records.json",
    "module_search.json",
    "files.json",
    "users.json",
    "fields.json",
    "pipeline.json",
    "modules.json",
    "coql.json",
    "related_records.json",
    "record.json",
)
_NOT_REQUIRED_PARAMS = frozenset({"per_page", "owner_id"})
_PARAM_SPELLINGS = {"orginal_message_id": ("orginal_message_id", "original_message_id")}
_VERSION_PREFIX = re.compile(r"^/crm/v\d+(?=/)")

# The Kaizen post's Link / Unlink Deal to Emails endpoints, in the specs' own terms.
_LINK_ITEM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "message_id": {"type": "string"},
        "owner": {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"}}, "required": ["id"]},
        "linked_record": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "module": {"$ref": SPEC_PREFIX + "associate_email.json#/components/schemas/ModuleMap"},
            },
            "required": ["id", "name", "module"],
        },
    },
    "required": ["owner", "linked_record"],
}
_LINK_BODY = {"type": "object", "properties": {"Emails": {"type": "array", "items": _LINK_ITEM}}, "required": ["Emails"]}
_OWNER_ID = {"name": "owner_id", "in": "query", "required": True, "schema": {"type": "string"}}
_MESSAGE_IDS = {"name": "message_ids", "in": "query", "required": True, "schema": {"type": "string"}}


def _json_body(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_KAIZEN_PATHS: dict[str, dict[str, Any]] = {
    "/Contacts/{id}/Emails/actions/link_record": {
        "post": {"requestBody": _json_body(_LINK_BODY)},
        "delete": {"parameters": [_OWNER_ID, _MESSAGE_IDS]},
    },
    "/Contacts/{id}/Emails/{message_id}/actions/link_record": {
        "post": {"requestBody": _json_body(_LINK_BODY)},
        "delete": {"parameters": [_OWNER_ID]},
    },
}


@dataclass(frozen=True)
class Violation:
    """A request that breaks the spec, answered the way Zoho answers it."""

    method: str
    path: str
    status: int
    code: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)
    in_body: bool = False
    """True when the fault is inside the JSON body (Zoho then wraps the error in the body's list)."""

    def __str__(self) -> str:
        return f"{self.method} {self.path}: {self.code} {self.message} {dict(self.details)}"


@dataclass(frozen=True)
class _Operation:
    spec: str
    parameters: tuple[Mapping[str, Any], ...]
    body: Mapping[str, Any] | None


def _load_specs() -> dict[str, dict[str, Any]]:
    folder = resources.files("syncd.sandbox") / "oas"
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in folder.iterdir() if p.name.endswith(".json")}


def _patched(specs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The specs with the doc's word applied where they contradict it (in memory only)."""
    specs = copy.deepcopy(specs)
    schema = specs["associate_email.json"]["components"]["schemas"]["associate_email"]
    required = [key for key in schema["required"] if key != "linked_record"]
    schema["required"] = required + ["subject", "content"]
    return specs


def _no_check(*_args: Any) -> Iterable[jsonschema.ValidationError]:
    return ()


def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


_FORMATS = jsonschema.FormatChecker(formats=())
_FORMATS.checks("date-time")(_is_date_time)
# OAS 3.0 schemas are draft-4 style; patterns are sample-derived placeholders, never enforced.
_Validator = validators.extend(jsonschema.Draft4Validator, {"pattern": _no_check})


class SpecValidator:
    """Finds the operation a request addresses and checks the request against it."""

    def __init__(self) -> None:
        specs = _patched(_load_specs())
        self._registry: Registry = Registry().with_resources(
            (SPEC_PREFIX + name, DRAFT4.create_resource(doc)) for name, doc in specs.items()
        )
        by_shape: dict[str, dict[str, _Operation]] = {}
        templates: dict[str, str] = {}
        for name in _ENDPOINT_FILES:
            for template, item in specs[name]["paths"].items():
                self._add(by_shape, templates, name, _VERSION_PREFIX.sub("", template), item)
        for template, item in _KAIZEN_PATHS.items():
            # Their only $ref is absolute; any spec name serves as their base.
            self._add(by_shape, templates, "associate_email.json", template, item)
        # More literal segments first: /Contacts/1/actions/associate_email before /{m}/{id}/{rl}/{rid}.
        ordered = sorted(by_shape, key=lambda shape: -sum(1 for s in shape.split("/") if s and s != "{}"))
        self._routes: list[tuple[re.Pattern[str], dict[str, _Operation]]] = [(_path_regex(templates[shape]), by_shape[shape]) for shape in ordered]

    def _add(
        self,
        by_shape: dict[str, dict[str, _Operation]],
        templates: dict[str, str],
        spec: str,
        template: str,
        item: Mapping[str, Any],
    ) -> None:
        shape = re.sub(r"\{[^}]+\}", "{}", template)
        templates.setdefault(shape, template)
        methods = by_shape.setdefault(shape, {})
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete") and method.upper() not in methods:
                params = tuple(self._deref(spec, p) for p in op.get("parameters", []))
                body = self._deref(spec, op["requestBody"]) if "requestBody" in op else None
                methods[method.upper()] = _Operation(spec, params, body)

    def _deref(self, spec: str, node: Mapping[str, Any]) -> Mapping[str, Any]:
        ref = node.get("$ref")
        if not isinstance(ref, str):
            return node
        base = ref if ref.startswith("http") else SPEC_PREFIX + spec + ref
        resolved: Mapping[str, Any] = self._registry.resolver().lookup(base).contents
        return resolved

    def check(self, method: str, path: str, query: Mapping[str, list[str]], content_type: str, body: bytes) -> Violation | None:
        """None when the request conforms; else the first violation found."""
        rel = _VERSION_PREFIX.sub("", path)
        for regex, methods in self._routes:
            if rel != path and regex.fullmatch(rel):
                break
        else:
            return Violation(method, path, 404, "INVALID_URL_PATTERN", "Please check if the URL trying to access is a correct one")
        op = methods.get(method.upper())
        if op is None:
            return Violation(method, path, 400, "INVALID_REQUEST_METHOD", "The http request method type is not a valid one")
        return self._check_params(method, path, op, query) or self._check_body(method, path, op, content_type, body)

    def _check_params(self, method: str, path: str, op: _Operation, query: Mapping[str, list[str]]) -> Violation | None:
        for param in op.parameters:
            if param.get("in") != "query":
                continue
            name = param["name"]
            spellings = _PARAM_SPELLINGS.get(name, (name,))
            given = next((query[s][0] for s in spellings if query.get(s)), None)
            if given is None:
                if param.get("required") and name not in _NOT_REQUIRED_PARAMS:
                    return Violation(method, path, 400, "REQUIRED_PARAM_MISSING", "One of the expected parameter is missing", {"param": name})
                continue
            schema = param.get("schema", {})
            value = _coerce(given, schema.get("type"))
            error = jsonschema.exceptions.best_match(self._validator(op.spec, schema).iter_errors(value))
            if error is not None:
                details = {"param": name, "expected_data_type": schema.get("type", "string")}
                return Violation(method, path, 400, "INVALID_DATA", f"invalid value for parameter {name}", details)
        return None

    def _check_body(self, method: str, path: str, op: _Operation, content_type: str, body: bytes) -> Violation | None:
        if op.body is None:
            return None
        media = content_type.split(";")[0].strip().lower()
        content = op.body.get("content", {})
        if media == "multipart/form-data" and media in content:
            return self._check_multipart(method, path, op.spec, content[media].get("schema", {}), content_type, body)
        if "application/json" not in content:
            return Violation(method, path, 400, "INVALID_DATA", f"unsupported content type {media or 'none'}")
        try:
            document = json.loads(body) if body.strip() else {}
        except ValueError:
            return Violation(method, path, 400, "INVALID_DATA", "the request body is not valid JSON", in_body=False)
        schema = content["application/json"]["schema"]
        error = jsonschema.exceptions.best_match(self._validator(op.spec, schema).iter_errors(document))
        return None if error is None else _body_violation(method, path, error)

    def _check_multipart(
        self, method: str, path: str, spec: str, schema: Mapping[str, Any], content_type: str, body: bytes
    ) -> Violation | None:
        """Only the presence of required parts: the spec types binary parts as objects."""
        names = {part.get_param("name", header="content-disposition") for part in multipart_parts(content_type, body)}
        for required in self._deref(spec, schema).get("required", []):
            if required not in names:
                return Violation(method, path, 400, "MANDATORY_NOT_FOUND", "required field not found", {"api_name": required})
        return None

    def _validator(self, spec: str, schema: Mapping[str, Any]) -> jsonschema.protocols.Validator:
        # Local "#/components/..." refs of an extracted schema resolve against the file it came from.
        resolver = self._registry.resolver(base_uri=SPEC_PREFIX + spec)
        return _Validator(schema, registry=self._registry, format_checker=_FORMATS, _resolver=resolver)


def _path_regex(template: str) -> re.Pattern[str]:
    parts = (r"[^/]+" if seg.startswith("{") else re.escape(seg) for seg in template.split("/"))
    return re.compile("/".join(parts))


def _coerce(value: str, kind: object) -> object:
    """Query strings as the type their schema names, so type and enum checks mean something."""
    if kind == "integer":
        try:
            return int(value)
        except ValueError:
            return value
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    return value


def multipart_parts(content_type: str, body: bytes) -> list[Message]:
    """The parts of a multipart/form-data body (empty when it is not one)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return []
    return [part for part in message.iter_parts() if isinstance(part, Message)]


def _body_violation(method: str, path: str, error: jsonschema.ValidationError) -> Violation:
    json_path = error.json_path
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        key = missing[0] if missing else ""
        details = {"api_name": key, "json_path": f"{json_path}.{key}"}
        return Violation(method, path, 400, "MANDATORY_NOT_FOUND", "required field not found", details, in_body=True)
    api_name = str(error.path[-1]) if error.path else ""
    details: dict[str, Any] = {"api_name": api_name, "json_path": json_path}
    if error.validator == "type":
        details["expected_data_type"] = error.validator_value
    return Violation(method, path, 400, "INVALID_DATA", f"invalid data: {error.message}", details, in_body=True)


@functools.cache
def shared_validator() -> SpecValidator:
    """One validator per process: it is read-only once built, and building it parses ~1 MB of specs."""
    return SpecValidator()
