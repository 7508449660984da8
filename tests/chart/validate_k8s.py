"""Validates Kubernetes objects against Kubernetes' own OpenAPI schemas (kubernetes-validate).

    validate_k8s.py VERSION=OBJECTS.json...

Each OBJECTS.json holds a JSON array of objects (what `helm template --kube-version VERSION`
rendered). Every object of a built-in kind is validated strictly (unknown fields are errors, as
`kubectl apply --validate=strict` makes them) against the schemas of Kubernetes VERSION. Objects of other API
groups (the Prometheus Operator's) are listed, not validated: validate_crds.mjs takes them.

Prints one JSON line per pair: {"version", "file", "validated": [kind/name...], "custom": [...],
"errors": [...]}, and exits 1 when there is an error (or when a VERSION has no schemas).
"""

import json
import sys

import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

# API groups whose kinds come from CustomResourceDefinitions, not from Kubernetes itself.
CUSTOM_GROUPS = ("monitoring.coreos.com/",)


def check(version: str, path: str) -> dict:
    with open(path) as f:
        objects = json.load(f)
    report = {"version": version, "file": path, "validated": [], "custom": [], "errors": []}
    known = sorted(set(kubernetes_validate.utils.all_versions()), key=lambda v: tuple(map(int, v.split("."))))
    if version not in known:
        report["errors"].append(
            f"no schemas for Kubernetes {version}; this kubernetes-validate has " + ", ".join(known)
        )
    for obj in objects if not report["errors"] else []:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if str(obj.get("apiVersion", "")).startswith(CUSTOM_GROUPS):
            report["custom"].append(name)
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
            report["validated"].append(name)
        except ValidationError as e:
            where = "/".join(str(p) for p in e.path) or "(top)"
            report["errors"].append(f"{name} at {where}: {e.message}")
        except SchemaNotFoundError as e:
            report["errors"].append(f"{name}: {e}")
    return report


def main() -> int:
    failed = False
    for pair in sys.argv[1:]:
        version, _, path = pair.partition("=")
        report = check(version, path)
        print(json.dumps(report))
        failed = failed or bool(report["errors"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
