"""An artifact's manifest.json: what describes a model artifact without loading it (model/artifacts.py writes
it; the promotion gate, model/gate.py, reads nothing else). Kept free of torch and faiss, so reading one takes
milliseconds."""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "manifest.json"


def read_manifest(path: Path) -> dict:
    """The manifest of the artifact directory `path`; a clear error when it is not an artifact."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a model artifact (no {MANIFEST}); train one with `pinrec train`"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{manifest_path} is not valid JSON ({error}); the artifact is damaged") from error
    if not isinstance(manifest, dict):
        raise ValueError(f"{manifest_path} holds a {type(manifest).__name__}, not a JSON object")
    return manifest
