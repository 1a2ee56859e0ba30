"""What kopf writes on an object once it has handled it, with the operator's own persistence settings: the
diff base it compares the next read against, and the size the API server then counts."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from fedfleet.operator import handlers

#: The API server refuses an object whose annotations, keys and values together, exceed 256 KiB.
ANNOTATIONS_LIMIT = 256 * 1024


def operator_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    handlers.configure(settings)  # what the startup handler applies
    return settings


def essence(settings: kopf.OperatorSettings, body: dict[str, Any]) -> Any:
    """What kopf compares with the stored diff base to tell whether the object changed."""
    return settings.persistence.diffbase_storage.build(body=kopf.Body(body))


def handled(settings: kopf.OperatorSettings, body: dict[str, Any]) -> dict[str, Any]:
    """The object as the API server stores it after kopf patched in the diff base of `body`."""
    patch = kopf.Patch()
    settings.persistence.diffbase_storage.store(body=kopf.Body(body), patch=patch, essence=essence(settings, body))
    stored = copy.deepcopy(body)
    stored["metadata"].setdefault("annotations", {}).update(patch["metadata"]["annotations"])
    return stored


def stored_diffbase(settings: kopf.OperatorSettings, body: dict[str, Any]) -> Any:
    return settings.persistence.diffbase_storage.fetch(body=kopf.Body(body))


def annotations_size(body: dict[str, Any]) -> int:
    """Counted as the API server does: the bytes of every key and value."""
    annotations = body["metadata"].get("annotations") or {}
    return sum(len(key.encode()) + len(value.encode()) for key, value in annotations.items())
