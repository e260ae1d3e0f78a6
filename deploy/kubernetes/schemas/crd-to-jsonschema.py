#!/usr/bin/env python3
"""Turns a CustomResourceDefinition's openAPIV3Schema into a strict JSON Schema (draft-07).

    python3 crd-to-jsonschema.py keda.sh_scaledobjects.yaml v1alpha1 SOURCE-NOTE > out.json

What changes, so that validation is as strict as kubectl's server-side field validation:
- every object that lists `properties` and neither sets `additionalProperties` nor
  `x-kubernetes-preserve-unknown-fields: true` gets `additionalProperties: false` (unknown or
  misspelt fields are errors instead of being pruned silently);
- `x-kubernetes-int-or-string: true` becomes `anyOf: [integer, string]`; `nullable: true` adds null;
- `apiVersion` and `kind` are pinned to the CRD's group/version and kind, and required.
`metadata` stays `{type: object}` as in the CRD: scripts/check-deploy.sh validates it against
the Kubernetes ObjectMeta schema. Needs PyYAML.
"""
import json
import sys

import yaml


def strict(node):
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: strict(v) for k, v in node.items()}
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    if node.pop("x-kubernetes-int-or-string", False):
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.pop("nullable", False) and isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]
    return node


def main():
    crd_path, version, source = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(crd_path) as f:
        crd = yaml.safe_load(f)
    spec = crd["spec"]
    (served,) = [v for v in spec["versions"] if v["name"] == version]
    schema = strict(served["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": f"{spec['group']}/{version}"}
    schema["properties"]["kind"] = {"const": spec["names"]["kind"]}
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    out = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": f"Derived from {source} by deploy/kubernetes/schemas/crd-to-jsonschema.py; do not edit by hand.",
        "title": f"{spec['names']['kind']} {spec['group']}/{version}",
        **schema,
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
