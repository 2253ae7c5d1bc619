"""Submits one retraining TrainJob of the release: run in the pinrec image by the chart's retraining CronJob
(templates/training-schedule.yaml).

    python submit-trainjob.py

It reads the TrainJob the chart rendered into its training ConfigMap (PINREC_TRAINJOB_MANIFEST, a file),
which names itself by metadata.generateName, and creates it in the pod's namespace (PINREC_NAMESPACE) with
the pod's ServiceAccount, which may only create, get and list TrainJobs there. While a TrainJob of the release
is still running it creates none (a run that outlasts the schedule would otherwise overlap the next, and both
would promote). Exit status 0 when created or held back, 1 on an error."""

import os
import sys

import yaml  # PyYAML, a dependency of the kubernetes client
from kubernetes import client, config

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
FINISHED = ("Complete", "Failed")  # TrainJob condition types of a run that is over
# The labels that single out the release's retraining TrainJobs.
SELECTOR_LABELS = ("app.kubernetes.io/instance", "app.kubernetes.io/component")


def load_manifest(path: str) -> dict:
    with open(path, encoding="utf-8") as stream:
        manifest = yaml.safe_load(stream)
    metadata = manifest.get("metadata", {}) if isinstance(manifest, dict) else {}
    if (
        not isinstance(manifest, dict)
        or manifest.get("kind") != "TrainJob"
        or not metadata.get("generateName")
        or "name" in metadata
        or not all(metadata.get("labels", {}).get(label) for label in SELECTOR_LABELS)
    ):
        raise SystemExit(
            f"{path} is not a TrainJob with metadata.generateName, no name and the labels {SELECTOR_LABELS}"
        )
    return manifest


def finished(trainjob: dict) -> bool:
    conditions = trainjob.get("status", {}).get("conditions", [])
    return any(c.get("type") in FINISHED and c.get("status") == "True" for c in conditions)


def running(api: client.CustomObjectsApi, namespace: str, labels: dict) -> list[str]:
    selector = ",".join(f"{label}={labels[label]}" for label in SELECTOR_LABELS)
    listed = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, label_selector=selector)
    return [job["metadata"]["name"] for job in listed["items"] if not finished(job)]


def main() -> int:
    manifest = load_manifest(os.environ["PINREC_TRAINJOB_MANIFEST"])
    namespace = os.environ["PINREC_NAMESPACE"]
    try:
        config.load_incluster_config()  # the CronJob's pod: its ServiceAccount
    except config.ConfigException:
        config.load_kube_config()  # outside a cluster (the e2e run): KUBECONFIG
    api = client.CustomObjectsApi()
    try:
        busy = running(api, namespace, manifest["metadata"]["labels"])
        if busy:
            print(f"no new TrainJob: {', '.join(busy)} of this release is still running", flush=True)
            return 0
        created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    except client.ApiException as error:
        raise SystemExit(f"the API server refused: {error.status} {error.reason}: {error.body}") from None
    print(f"created TrainJob {created['metadata']['name']} in {namespace}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
