"""A small client of a Kubernetes API server for the e2e run: server-side apply, strict server-side
dry-runs, reads and lists, with resource paths found by discovery. The API server's own refusal message
is what a failure carries."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

FIELD_MANAGER = "pinrec-e2e"


class KubeApiError(RuntimeError):
    """The API server refused a call; the message is its own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Resource:
    path: str  # /api/v1 or /apis/group/version
    plural: str
    namespaced: bool

    def url(self, namespace: str | None, name: str | None = None) -> str:
        parts = [self.path]
        if self.namespaced:
            if namespace is None:
                raise ValueError(f"{self.plural} are namespaced: give a namespace")
            parts += ["namespaces", namespace]
        parts.append(self.plural)
        if name is not None:
            parts.append(name)
        return "/".join(parts)


class KubeApi:
    """Calls an API server at `server` as the bearer of `token`, trusting the CA certificate `ca`."""

    def __init__(self, server: str, token: str, ca: Path, timeout_s: float = 30.0) -> None:
        self._http = httpx.Client(
            base_url=server,
            headers={"Authorization": f"Bearer {token}"},
            verify=str(ca),
            timeout=timeout_s,
        )
        self._resources: dict[tuple[str, str], Resource] = {}
        self._warnings: list[str] = []

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, url: str, **kwargs: Any) -> dict:
        response = self._http.request(method, url, **kwargs)
        # Warnings such as `would violate PodSecurity` on a Deployment come as headers: 299 - "message".
        self._warnings += [w.split(" ", 2)[-1].strip('"') for w in response.headers.get_list("warning")]
        if response.is_success:
            return response.json()
        try:
            message = response.json().get("message", response.text)
        except json.JSONDecodeError:
            message = response.text
        raise KubeApiError(response.status_code, f"{method} {url}: {response.status_code} {message}")

    def take_warnings(self) -> list[str]:
        """The API server's warnings since the last call."""
        warnings, self._warnings = self._warnings, []
        return warnings

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz", timeout=2).is_success
        except httpx.HTTPError:
            return False

    def resource(self, api_version: str, kind: str) -> Resource:
        """Where objects of this kind live, from the API server's discovery (cached)."""
        key = (api_version, kind)
        if key not in self._resources:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            for entry in self._call("GET", path)["resources"]:
                if "/" not in entry["name"]:  # not a subresource such as pods/log
                    found = Resource(path, entry["name"], entry["namespaced"])
                    self._resources[(api_version, entry["kind"])] = found
            if key not in self._resources:
                raise KubeApiError(404, f"the API server does not serve {kind} in {api_version}")
        return self._resources[key]

    def _object_url(self, manifest: dict, namespace: str | None) -> str:
        resource = self.resource(manifest["apiVersion"], manifest["kind"])
        own = manifest["metadata"].get("namespace", namespace)
        return resource.url(own if resource.namespaced else None, manifest["metadata"]["name"])

    def apply(self, manifest: dict, namespace: str | None = None, *, dry_run: bool = False) -> dict:
        """Server-side apply with strict field validation: an unknown or duplicate field is refused."""
        params = {"fieldManager": FIELD_MANAGER, "force": "true", "fieldValidation": "Strict"}
        if dry_run:
            params["dryRun"] = "All"
        return self._call(
            "PATCH",
            self._object_url(manifest, namespace),
            params=params,
            content=json.dumps(manifest),
            headers={"Content-Type": "application/apply-patch+yaml"},
        )

    def create(self, manifest: dict, namespace: str | None = None, *, dry_run: bool = False) -> dict:
        """Create (generateName works), strictly validated; with dry_run what a create would do (admission,
        Pod Security, schema) without storing."""
        resource = self.resource(manifest["apiVersion"], manifest["kind"])
        params = {"fieldValidation": "Strict"} | ({"dryRun": "All"} if dry_run else {})
        return self._call(
            "POST",
            resource.url(manifest["metadata"].get("namespace", namespace) if resource.namespaced else None),
            params=params,
            json=manifest,
        )

    def create_dry_run(self, manifest: dict, namespace: str | None = None) -> dict:
        return self.create(manifest, namespace, dry_run=True)

    def service_account_token(self, name: str, namespace: str, seconds: int = 600) -> str:
        """A short-lived token of the ServiceAccount (TokenRequest), to act as its pods do."""
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest"}
        request["spec"] = {"expirationSeconds": seconds}
        url = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
        return self._call("POST", url, json=request)["status"]["token"]

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        """The object, or None when it does not exist."""
        try:
            return self._call("GET", self.resource(api_version, kind).url(namespace, name))
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise

    def list(
        self, api_version: str, kind: str, namespace: str | None = None, *, selector: str | None = None
    ) -> list[dict]:
        params = {"labelSelector": selector} if selector else {}
        return self._call("GET", self.resource(api_version, kind).url(namespace), params=params)["items"]

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        try:
            self._call("DELETE", self.resource(api_version, kind).url(namespace, name))
        except KubeApiError as error:
            if error.status != 404:
                raise


def has_condition(obj: dict | None, kind: str) -> bool:
    """Whether the object's status has condition `kind` True (a missing object or status has none)."""
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def wait_for(check: Callable[[], str | None], *, what: str, timeout_s: float, every_s: float = 0.5) -> None:
    """Poll check() until it returns None (done); it returns what is still missing, which a timeout
    reports."""
    deadline = time.monotonic() + timeout_s
    missing = check()
    while missing is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout_s:.0f} s: {missing}")
        time.sleep(every_s)
        missing = check()
