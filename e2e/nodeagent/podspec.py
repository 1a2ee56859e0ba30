"""Pure translation of a pod spec into what a local process needs: argv, environment, volume files, phase.

Images cannot be pulled here, so an *image map* says which local command stands for an image. Each rule
plays the image's ENTRYPOINT and CMD, and the pod's `command`/`args` override them exactly as a container
runtime would: `command` replaces the entrypoint (and drops the image's CMD), `args` replaces CMD.

Image map file (YAML or JSON), rules tried in order, `match` is an fnmatch pattern tried against the full
image reference and against it without tag or digest:

    images:
      - match: "fedfleet/aggregator*"
        entrypoint: ["{bindir}/fedfleet"]
        cmd: ["aggregator"]
        env: {PATH: "{bindir}:/usr/local/bin:/usr/bin:/bin"}

`{python}` is the agent's Python interpreter and `{bindir}` its directory (the project venv's bin).
"""

from __future__ import annotations

import base64
import fnmatch
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

JSON = dict[str, Any]
# (namespace, name) -> the object's decoded data, or None if it does not exist
Lookup = Callable[[str, str], dict[str, bytes] | None]


class PodSpecError(Exception):
    """The pod asks for something this node cannot provide; the message says what (shown in its status)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


# ------------------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageRule:
    match: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


def _substitute(value: str, mapdir: Path) -> str:
    # abspath, not resolve(): a venv's python is a symlink, and resolving it would leave the venv.
    python = os.path.abspath(sys.executable)
    for name, replacement in (("{python}", python), ("{bindir}", os.path.dirname(python)), ("{mapdir}", str(mapdir))):
        value = value.replace(name, replacement)
    return value


def load_image_map(path: Path) -> list[ImageRule]:
    """Read and check an image map file; raises ValueError naming the rule and field that is wrong."""
    text = path.read_text()
    mapdir = path.resolve().parent
    doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ValueError(f"{path}: expected a mapping with a list under 'images'")
    rules = []
    for i, raw in enumerate(doc["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("match"), str):
            raise ValueError(f"{where}.match: must be a string pattern")
        lists = {}
        for key in ("entrypoint", "cmd"):
            value = raw.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{where}.{key}: must be a list of strings")
            lists[key] = tuple(_substitute(v, mapdir) for v in value)
        env = raw.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ValueError(f"{where}.env: must map names to strings")
        variables = {k: _substitute(v, mapdir) for k, v in env.items()}
        rules.append(ImageRule(raw["match"], lists["entrypoint"], lists["cmd"], variables))
    return rules


def _repository(image: str) -> str:
    """`registry:5000/team/app:1.2@sha256:…` -> `registry:5000/team/app`."""
    image = image.split("@", 1)[0]
    last_slash = image.rfind("/")
    colon = image.rfind(":")
    return image[:colon] if colon > last_slash else image


def resolve_image(rules: list[ImageRule], image: str) -> ImageRule:
    for rule in rules:
        if fnmatch.fnmatchcase(image, rule.match) or fnmatch.fnmatchcase(_repository(image), rule.match):
            return rule
    raise PodSpecError("ErrImagePull", f"no local command is mapped to image {image!r} (see the image map)")


# ---------------------------------------------------------------------------------------------- expansion

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, `$$` escapes, anything else is left as is."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_REF.sub(sub, value)


def container_argv(rule: ImageRule, container: JSON, env: Mapping[str, str]) -> list[str]:
    command = container.get("command")
    args = container.get("args")
    # `command` replaces the image's ENTRYPOINT and drops its CMD; `args` alone replaces only CMD.
    head = list(command) if command else list(rule.entrypoint)
    tail = args if args is not None else ([] if command else list(rule.cmd))
    argv = [*head, *tail]
    if not argv:
        raise PodSpecError("CreateContainerError", f"container {container['name']!r}: no command to run")
    return [expand(a, env) for a in argv]


# ----------------------------------------------------------------------------------------------------- env

_LABEL_REF = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")


def field_ref(pod: JSON, path: str, pod_ip: str, host_ip: str) -> str:
    """The value of a downward-API fieldRef, as the kubelet computes it."""
    meta, spec = pod["metadata"], pod["spec"]
    m = _LABEL_REF.fullmatch(path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path == "metadata.labels" or path == "metadata.annotations":
        items = meta.get(path.split(".")[1], {})
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    if path not in simple:
        raise PodSpecError("CreateContainerConfigError", f"unsupported fieldRef fieldPath {path!r}")
    return str(simple[path])


def _key_ref(ref: JSON, kind: str, namespace: str, lookup: Lookup) -> str | None:
    data = lookup(namespace, ref["name"])
    optional = bool(ref.get("optional", False))
    if data is None or ref["key"] not in data:
        if optional:
            return None
        what = "not found" if data is None else f"has no key {ref['key']!r}"
        raise PodSpecError("CreateContainerConfigError", f"{kind} {ref['name']!r} {what}")
    return data[ref["key"]].decode()


def container_env(
    pod: JSON,
    container: JSON,
    *,
    base: Mapping[str, str],
    pod_ip: str,
    host_ip: str,
    configmaps: Lookup,
    secrets: Lookup,
) -> dict[str, str]:
    """The process environment: base (agent + image), then envFrom, then env, later entries winning;
    env values may refer to names defined before them with $(NAME)."""
    ns = pod["metadata"]["namespace"]
    env = dict(base)
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        for kind, lookup, key in (("configmap", configmaps, "configMapRef"), ("secret", secrets, "secretRef")):
            if key not in source:
                continue
            ref = source[key]
            data = lookup(ns, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise PodSpecError("CreateContainerConfigError", f"{kind} {ref['name']!r} not found")
            env.update({prefix + k: v.decode() for k, v in data.items()})
    for var in container.get("env", []):
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        value: str | None
        if "fieldRef" in source:
            value = field_ref(pod, source["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "configMapKeyRef" in source:
            value = _key_ref(source["configMapKeyRef"], "configmap", ns, configmaps)
        elif "secretKeyRef" in source:
            value = _key_ref(source["secretKeyRef"], "secret", ns, secrets)
        elif "resourceFieldRef" in source:
            value = _resource_field(container, source["resourceFieldRef"])
        else:
            raise PodSpecError("CreateContainerConfigError", f"env {name!r}: unsupported valueFrom")
        if value is not None:
            env[name] = value
    return env


def _resource_field(container: JSON, ref: JSON) -> str:
    # limits.cpu -> resources.limits.cpu; with no limit set the kubelet reports node allocatable, and this
    # node is "unlimited", so 0 stands for "none" rather than inventing a number.
    section, _, resource = ref["resource"].partition(".")
    value = container.get("resources", {}).get(section, {}).get(resource)
    return str(value) if value is not None else "0"


# ------------------------------------------------------------------------------------------------ volumes

# (namespace, service account, audience or None, expirationSeconds) -> token
TokenSource = Callable[[str, str, str | None, int], str]


def _decoded(obj: JSON, binary: bool) -> dict[str, bytes]:
    out = {k: (base64.b64decode(v) if binary else v.encode()) for k, v in obj.get("data", {}).items()}
    out.update({k: base64.b64decode(v) for k, v in obj.get("binaryData", {}).items()})
    return out


def _items(data: dict[str, bytes], items: list[JSON] | None, what: str, optional: bool) -> dict[str, bytes]:
    if not items:
        return dict(data)
    files = {}
    for item in items:
        if item["key"] in data:
            files[item["path"]] = data[item["key"]]
        elif not optional:
            raise PodSpecError("CreateContainerConfigError", f"{what} has no key {item['key']!r}")
    return files


def _object_files(source: JSON, kind: str, ns: str, lookup: Lookup) -> dict[str, bytes]:
    name = source.get("name") or source.get("secretName") or ""
    data = lookup(ns, name)
    if data is None:
        if source.get("optional"):
            return {}
        raise PodSpecError("CreateContainerConfigError", f"{kind} {name!r} not found")
    return _items(data, source.get("items"), f"{kind} {name!r}", bool(source.get("optional")))


def _downward_files(pod: JSON, items: list[JSON], pod_ip: str, host_ip: str) -> dict[str, bytes]:
    return {
        item["path"]: field_ref(pod, item["fieldRef"]["fieldPath"], pod_ip, host_ip).encode()
        for item in items
        if "fieldRef" in item
    }


def volume_files(
    pod: JSON,
    volume: JSON,
    *,
    pod_ip: str,
    host_ip: str,
    configmaps: Lookup,
    secrets: Lookup,
    tokens: TokenSource,
) -> dict[str, bytes] | None:
    """The files of a secret/configMap/downwardAPI/projected volume (relative path -> content), or None
    for a volume that is a plain directory (emptyDir and friends)."""
    ns = pod["metadata"]["namespace"]
    if "secret" in volume:
        return _object_files(volume["secret"], "secret", ns, secrets)
    if "configMap" in volume:
        return _object_files(volume["configMap"], "configmap", ns, configmaps)
    if "downwardAPI" in volume:
        return _downward_files(pod, volume["downwardAPI"].get("items", []), pod_ip, host_ip)
    if "projected" in volume:
        files: dict[str, bytes] = {}
        for src in volume["projected"].get("sources", []):
            if "secret" in src:
                files.update(_object_files(src["secret"], "secret", ns, secrets))
            elif "configMap" in src:
                files.update(_object_files(src["configMap"], "configmap", ns, configmaps))
            elif "downwardAPI" in src:
                files.update(_downward_files(pod, src["downwardAPI"].get("items", []), pod_ip, host_ip))
            elif "serviceAccountToken" in src:
                sat = src["serviceAccountToken"]
                sa = pod["spec"].get("serviceAccountName") or "default"
                token = tokens(ns, sa, sat.get("audience"), int(sat.get("expirationSeconds", 3600)))
                files[sat["path"]] = token.encode()
        return files
    if any(k in volume for k in ("emptyDir", "hostPath", "persistentVolumeClaim", "ephemeral")):
        return None
    kinds = sorted(set(volume) - {"name"})
    raise PodSpecError("CreateContainerConfigError", f"volume {volume['name']!r}: unsupported type {kinds}")


def secret_lookup_data(secret: JSON) -> dict[str, bytes]:
    return _decoded(secret, binary=True)


def configmap_lookup_data(configmap: JSON) -> dict[str, bytes]:
    return _decoded(configmap, binary=False)


# -------------------------------------------------------------------------------------------------- phase


def pod_phase(init_done: bool, init_failed: bool, all_started: bool, exits: list[int | None]) -> str:
    """The pod phase from its containers, as the kubelet decides it.

    exits holds one entry per app container: None while it runs (or waits to be restarted), otherwise the
    exit code of a container that the restart policy will not start again. all_started: every app
    container has been started at least once.
    """
    if init_failed:
        return "Failed"
    if not init_done or not all_started:
        return "Pending"
    if any(code is None for code in exits):
        return "Running"
    return "Succeeded" if all(code == 0 for code in exits) else "Failed"
