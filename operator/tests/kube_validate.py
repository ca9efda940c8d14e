#!/usr/bin/env python3
"""Validate Plinth's rendered objects and CsiDeployment manifests offline.

Layout of the directory given as the only argument (written by tests/kube_validate.rs):
  objects/*.json          rendered objects: must pass the Kubernetes OpenAPI schemas (strict)
  invalid-objects/*.json  must FAIL them (proves the validator is live)
  crd.json                the generated CustomResourceDefinition
  crs/*.yaml              CsiDeployment manifests: must pass the CRD's openAPIV3Schema
  invalid-crs/*.yaml      must FAIL it

Unknown fields fail, as with `kubectl apply` (strict field validation): in the CRD schema
every object without x-kubernetes-preserve-unknown-fields gets additionalProperties: false.
Exit status 0 only when every expectation holds.
"""

import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = "1.34.0"
# Kinds that come from CRDs (not in the core schemas); their shape is checked in Rust.
CRD_KINDS = {"VolumeSnapshotClass"}


def object_errors(data):
    if data.get("kind") in CRD_KINDS:
        return None
    try:
        kubernetes_validate.validate(data, K8S_VERSION, strict=True)
        return []
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(str(p) for p in e.path)}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"no schema: {e}"]


def strict(schema, root=False):
    """OpenAPI v3 (structural) -> JSON Schema as the apiserver applies it."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {k: strict(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = strict(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [strict(v) for v in value]
        elif key.startswith("x-kubernetes-") or key == "nullable":
            continue
        else:
            out[key] = value
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        if root:
            # The apiserver validates these itself.
            for k in ("apiVersion", "kind", "metadata"):
                out["properties"].setdefault(k, {})
        out["additionalProperties"] = False
    return out


def main(base):
    base = pathlib.Path(base)
    failures = []
    counts = {"objects": 0, "skipped-crd-kinds": 0, "crs": 0, "invalid": 0}

    for path in sorted((base / "objects").glob("*.json")):
        errors = object_errors(json.loads(path.read_text()))
        if errors is None:
            counts["skipped-crd-kinds"] += 1
            continue
        counts["objects"] += 1
        failures += [f"{path.name}: {e}" for e in errors]
    for path in sorted((base / "invalid-objects").glob("*.json")):
        counts["invalid"] += 1
        if not object_errors(json.loads(path.read_text())):
            failures.append(f"{path.name}: accepted, but it is invalid")

    crd = json.loads((base / "crd.json").read_text())
    schema = strict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], root=True)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((base / "crs").glob("*.yaml")):
        counts["crs"] += 1
        for e in validator.iter_errors(yaml.safe_load(path.read_text())):
            failures.append(f"{path.name}: {'.'.join(str(p) for p in e.path)}: {e.message}")
    for path in sorted((base / "invalid-crs").glob("*.yaml")):
        counts["invalid"] += 1
        if not list(validator.iter_errors(yaml.safe_load(path.read_text()))):
            failures.append(f"{path.name}: accepted by the CRD schema, but it is invalid")

    print(json.dumps(counts))
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
