"""Offline helpers of scripts/k8s-validate.sh.

schemas  local JSON schemas for kubeconform, so that nothing is downloaded:
         - core kinds from the `kubernetes-validate` package: its strict schemas, whose `$ref`s point at
           kubernetes.io, rewritten to the sibling `_definitions.json`; written as
           <dir>/core/<kind>-<group>-<version>.json, kubeconform's {{ .ResourceKind }}{{ .KindSuffix }};
         - custom resources from the CRDs' `openAPIV3Schema`, as <dir>/crds/<group>/<kind>_<version>.json,
           made strict the way kubectl validates (unknown fields rejected unless the CRD preserves them)
           and with `metadata` checked against the core ObjectMeta.
rules    the `spec` of every PrometheusRule in rendered manifests, as one file for `promtool check rules`.
objects  "Kind/name" of every object in rendered manifests.
embedded the objects that rendered ConfigMaps carry for someone else to create (the retraining TrainJob),
         as one manifest file, so that kubeconform validates them too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator
from importlib import metadata, resources
from pathlib import Path

import yaml

from pinrec.localstack.chart_e2e import embedded_objects

CORE_REF = '"/api/_definitions.json#'  # how kubernetes-validate's schemas reference their definitions
OBJECT_META = "../../core/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
SCHEMA_KEYS = ("properties", "patternProperties")  # maps of name -> schema
SUBSCHEMA_KEYS = ("items", "additionalProperties", "not")  # a schema (or a boolean)
SCHEMA_LIST_KEYS = ("allOf", "anyOf", "oneOf")  # lists of schemas


def core_schema_dir(kube_version: str) -> Path:
    root = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{kube_version}-local-strict"
    path = Path(str(root))
    if not path.is_dir():
        versions = sorted(p.name for p in path.parent.iterdir() if p.name.endswith("-local-strict"))
        raise SystemExit(
            f"kubernetes-validate has no schemas for {kube_version}; it has {', '.join(versions)}"
        )
    return path


def write_core_schemas(kube_version: str, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for source in core_schema_dir(kube_version).glob("*.json"):
        text = source.read_text(encoding="utf-8").replace(CORE_REF, '"_definitions.json#')
        schema = json.loads(text)
        # Without $id the file's own location is the base URI, so the rewritten refs resolve locally.
        schema.pop("$id", None)
        (out / source.name).write_text(json.dumps(schema), encoding="utf-8")
        count += 1
    return count


def strict_schema(node: dict) -> dict:
    """An OpenAPI v3 schema of a CRD as a draft-4 JSON schema that rejects unknown fields."""
    out = dict(node)
    for key in SCHEMA_KEYS:
        if isinstance(node.get(key), dict):
            out[key] = {name: strict_schema(sub) for name, sub in node[key].items()}
    for key in SUBSCHEMA_KEYS:
        if isinstance(node.get(key), dict):
            out[key] = strict_schema(node[key])
    for key in SCHEMA_LIST_KEYS:
        if isinstance(node.get(key), list):
            out[key] = [strict_schema(sub) for sub in node[key]]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserves = node.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in node and "additionalProperties" not in node and not preserves:
        out["additionalProperties"] = False
    return out


def crd_schemas(crd: dict) -> Iterator[tuple[str, str, dict]]:
    """(group, file name, schema) of every version of a CustomResourceDefinition."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    for version in crd["spec"]["versions"]:
        source = (version.get("schema") or {}).get("openAPIV3Schema")
        if source is None:
            continue
        schema = strict_schema(source)
        properties = schema.setdefault("properties", {})
        properties["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
        properties["kind"] = {"type": "string", "enum": [kind]}
        properties["metadata"] = {"$ref": OBJECT_META}
        schema["$schema"] = "http://json-schema.org/draft-04/schema#"
        yield group, f"{kind.lower()}_{version['name']}.json", schema


def write_crd_schemas(crd_dir: Path, out: Path) -> int:
    count = 0
    for path in sorted(crd_dir.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not document or document.get("kind") != "CustomResourceDefinition":
                continue
            for group, name, schema in crd_schemas(document):
                target = out / group / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(schema), encoding="utf-8")
                count += 1
    return count


def fingerprint(kube_version: str, crd_dir: Path) -> str:
    digest = hashlib.sha256()
    digest.update(f"{kube_version} {metadata.version('kubernetes-validate')}".encode())
    digest.update(Path(__file__).read_bytes())
    for path in sorted(crd_dir.glob("*.yaml")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build_schemas(kube_version: str, crd_dir: Path, out: Path) -> None:
    stamp = out / ".fingerprint"
    expected = fingerprint(kube_version, crd_dir)
    if stamp.exists() and stamp.read_text() == expected:
        print(f"schemas up to date in {out}")
        return
    core = write_core_schemas(kube_version, out / "core")
    crds = write_crd_schemas(crd_dir, out / "crds")
    if crds == 0:
        raise SystemExit(f"no CustomResourceDefinition with a schema in {crd_dir}")
    stamp.write_text(expected)
    print(f"wrote {core} core schemas (Kubernetes {kube_version}) and {crds} CRD schemas to {out}")


def documents(paths: list[Path]) -> Iterator[dict]:
    for path in paths:
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(document, dict) and document.get("kind"):
                yield document


def extract_rules(paths: list[Path], out: Path) -> None:
    groups = [
        group
        for doc in documents(paths)
        if doc["kind"] == "PrometheusRule"
        for group in doc["spec"]["groups"]
    ]
    if not groups:
        raise SystemExit(f"no PrometheusRule in {', '.join(map(str, paths))}")
    out.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    print(f"{sum(len(g['rules']) for g in groups)} rules in {len(groups)} groups -> {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    schemas = commands.add_parser("schemas", help="write the local schema folders for kubeconform")
    schemas.add_argument("--kube-version", required=True, help="e.g. 1.31.0")
    schemas.add_argument(
        "--crds", type=Path, required=True, help="folder of CustomResourceDefinition YAML files"
    )
    schemas.add_argument("--out", type=Path, required=True, help="folder to write core/ and crds/ into")
    rules = commands.add_parser(
        "rules", help="the PrometheusRule specs of rendered manifests, as one rules file"
    )
    rules.add_argument("manifests", type=Path, nargs="+")
    rules.add_argument("--out", type=Path, required=True)
    objects = commands.add_parser("objects", help="list Kind/name of every object in rendered manifests")
    objects.add_argument("manifests", type=Path, nargs="+")
    embedded = commands.add_parser("embedded", help="the objects ConfigMaps of rendered manifests carry")
    embedded.add_argument("manifests", type=Path, nargs="+")
    embedded.add_argument("--out", type=Path, required=True, help="the manifest file to write (maybe empty)")
    args = parser.parse_args(argv)

    if args.command == "schemas":
        build_schemas(args.kube_version, args.crds, args.out)
    elif args.command == "rules":
        extract_rules(args.manifests, args.out)
    elif args.command == "embedded":
        found = embedded_objects(list(documents(args.manifests)))
        args.out.write_text(yaml.safe_dump_all(found, sort_keys=False), encoding="utf-8")
        for doc in found:
            print(
                f"  embedded {doc['kind']}/{doc['metadata'].get('name') or doc['metadata']['generateName']}"
            )
    else:
        for doc in documents(args.manifests):
            print(f"{doc['kind']}/{doc['metadata']['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
