#!/usr/bin/env python3
"""Checks docs/openapi.json with tools we did not write: the document is valid OpenAPI 3.1
(openapi-spec-validator), and every example in it (parameters, request bodies, responses) is valid against its
own schema (jsonschema, draft 2020-12, the dialect of OpenAPI 3.1). The live test that the appliance accepts the
example requests and answers what the schemas say is softhsm-tests/openapi.rs.

Usage: python3 tests/check_openapi.py [docs/openapi.json]    (pip install openapi-spec-validator)
"""
import json
import sys

import jsonschema
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012


def main(path):
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    validate(doc)
    # "$ref": "#/components/schemas/X" inside a schema resolves against the whole document.
    registry = Registry().with_resource("urn:openapi", Resource(contents=doc, specification=DRAFT202012))

    checked = 0
    failures = []

    def check(where, schema, instance):
        nonlocal checked
        wrapped = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": "urn:openapi#/$defs/x"}
        holder = dict(doc)
        holder["$defs"] = {"x": schema}
        reg = registry.with_resource("urn:openapi", Resource(contents=holder, specification=DRAFT202012))
        validator = jsonschema.Draft202012Validator(wrapped, registry=reg)
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
        checked += 1
        for e in errors:
            failures.append(f"{where}: {'/'.join(map(str, e.path))}: {e.message}")

    def check_media(where, media):
        # A media type has one `example` or several named `examples` (OpenAPI 3.1 §4.8.14), not both.
        if "example" in media and "examples" in media:
            failures.append(f"{where}: both example and examples")
        if "example" in media:
            check(where, media["schema"], media["example"])
        for label, ex in media.get("examples", {}).items():
            if "value" not in ex:
                failures.append(f"{where} example {label}: no value")
                continue
            check(f"{where} example {label}", media["schema"], ex["value"])

    for route, item in doc["paths"].items():
        for method, op in item.items():
            name = f"{method.upper()} {route}"
            for p in op.get("parameters", []):
                if "example" in p:
                    check(f"{name} parameter {p['name']}", p["schema"], p["example"])
            for ctype, media in op.get("requestBody", {}).get("content", {}).items():
                check_media(f"{name} request {ctype}", media)
            for status, resp in op["responses"].items():
                for ctype, media in resp.get("content", {}).items():
                    check_media(f"{name} {status} {ctype}", media)
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)
    print(f"{path}: valid OpenAPI {doc['openapi']}, {checked} examples valid against their schemas")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/openapi.json")
