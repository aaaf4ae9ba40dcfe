#!/usr/bin/env python3
"""Print a JSON Schema for one version of a CRD, for check-jsonschema.

Usage: crd-jsonschema.py CRD_YAML VERSION > schema.json

The CRD's openAPIV3Schema is OpenAPI, not JSON Schema; this translates the parts that
differ so a custom resource is judged as the API server would judge it:
- `nullable: true` admits null;
- `x-kubernetes-int-or-string` admits an integer or a string;
- objects with `properties` reject unknown fields (the API server's strict field
  validation, kubectl's default), unless `x-kubernetes-preserve-unknown-fields`;
- apiVersion, kind and metadata are required at the top, as the API server requires.
CEL rules (`x-kubernetes-validations`) are not evaluated here: the Rust tests cover them.
"""
import json
import sys

import yaml


def translate(node):
    if isinstance(node, list):
        return [translate(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: translate(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        out.get("type") in ("object", ["object", "null"])
        and "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    path, version = sys.argv[1], sys.argv[2]
    with open(path) as f:
        crd = yaml.safe_load(f)
    spec = crd["spec"]
    versions = {v["name"]: v for v in spec["versions"]}
    if version not in versions:
        sys.exit(f"{path}: no version {version!r} (have {', '.join(versions)})")
    schema = translate(versions[version]["schema"]["openAPIV3Schema"])
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema.setdefault("properties", {}).update(
        {
            "apiVersion": {"const": f"{spec['group']}/{version}"},
            "kind": {"const": spec["names"]["kind"]},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        }
    )
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    schema["additionalProperties"] = False
    json.dump(schema, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
