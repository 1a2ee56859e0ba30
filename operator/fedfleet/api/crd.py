"""The CustomResourceDefinitions of FederatedJob and ModelRollout, generated from their models.

The spec and status models are the single source of truth; this module turns their JSON schema (pydantic,
JSON Schema 2020-12) into the OpenAPI v3.0 *structural* schema that kube-apiserver demands: every node typed,
no `$ref`, no `anyOf`/`allOf`/`oneOf`, boolean `exclusiveMinimum`/`exclusiveMaximum`. Regenerate the committed
files with `python -m fedfleet.api.crd > crds/federatedjob.yaml` and `python -m fedfleet.api.crd modelrollout >
crds/modelrollout.yaml` (`make crds`); a unit test fails when a committed file and the models drift apart.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from fedfleet.api import modelrollout
from fedfleet.api.federatedjob import API_GROUP, API_VERSION, KIND, FederatedJobSpec
from fedfleet.api.modelrollout import ModelRolloutSpec
from fedfleet.api.rollout_rules import ROLLOUT_RULES
from fedfleet.api.rollout_status import ModelRolloutStatus
from fedfleet.api.rules import CROSS_FIELD_RULES, NAME_RULES, Rule
from fedfleet.api.status import FederatedJobStatus

PLURAL = "federatedjobs"
SINGULAR = "federatedjob"
SHORT_NAMES = ["fj"]
CATEGORIES = ["fedfleet"]

Schema = dict[str, Any]

# Keywords carried from the JSON schema, in the order they are written out, so the output is stable and
# reads the same way in every node. Anything else a model grows must be added here on purpose: an unknown
# keyword fails the build instead of silently loosening (or breaking) the API server's validation.
_KEY_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "items",
    "minItems",
    "maxItems",
    "maxProperties",
    "properties",
    "additionalProperties",
    "required",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
)
# Dropped on purpose: `title` is noise generated from the field name. `additionalProperties` is kept only
# when it is a schema (a map's values, e.g. a selector's matchLabels); `false` (extra="forbid") is not
# allowed in a structural schema — the API server prunes unknown fields instead (and `kubectl apply` with
# strict field validation reports them) — and `true` (a free-form dict) is said by
# `x-kubernetes-preserve-unknown-fields` on the field instead.
_DROPPED = frozenset({"title"})
_REF_PREFIX = "#/$defs/"


class SchemaConversionError(ValueError):
    """The models use a JSON-schema construct that has no structural OpenAPI v3.0 equivalent here."""


def structural_schema(json_schema: Schema, path: str = "spec", section_defaults: bool = True) -> Schema:
    """Convert a pydantic JSON schema (with `$defs`) into a Kubernetes structural schema.

    section_defaults: give optional object sections `default: {}` (the spec's sections, whose fields all have
    defaults); the status has no defaults: an absent section means "not reported yet".
    """
    defs: dict[str, Schema] = json_schema.get("$defs", {})
    return _convert(json_schema, defs, path=path, section_defaults=section_defaults)


def _resolve(node: Schema, defs: dict[str, Schema], path: str) -> Schema:
    """Inline a `$ref` and fold `Optional[X]` (anyOf X|null) into X; siblings override the target."""
    node = dict(node)
    if "$ref" in node:
        ref = node.pop("$ref")
        if not ref.startswith(_REF_PREFIX) or ref[len(_REF_PREFIX) :] not in defs:
            raise SchemaConversionError(f"{path}: unresolvable $ref {ref}")
        target = _resolve(defs[ref[len(_REF_PREFIX) :]], defs, path)
        node = {**target, **node}
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b != {"type": "null"}]
        if len(branches) != 1:
            raise SchemaConversionError(f"{path}: only Optional[X] unions are supported, got anyOf {branches}")
        # A null default means "absent": the field is simply optional in the CRD, with no default.
        if node.get("default", ...) is None:
            del node["default"]
        node = {**_resolve(branches[0], defs, path), **node}
    return node


def _convert(node: Schema, defs: dict[str, Schema], path: str, section_defaults: bool = True) -> Schema:
    node = _resolve(node, defs, path)
    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED or key == "$defs":
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema 2020 puts the bound in exclusiveMinimum; OpenAPI v3.0 pairs minimum with a flag.
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if bound in node:
                raise SchemaConversionError(f"{path}: both {bound} and {key} are set")
            out[bound] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: _convert(sub, defs, f"{path}.{name}", section_defaults) for name, sub in value.items()}
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = _convert(value, defs, f"{path}.*", section_defaults)
        elif key == "items":
            out[key] = _convert(value, defs, f"{path}[]", section_defaults)
        elif key in _KEY_ORDER:
            out[key] = value
        else:
            raise SchemaConversionError(f"{path}: JSON-schema keyword {key!r} has no CRD mapping")
    if "type" not in out:
        raise SchemaConversionError(f"{path}: every node of a structural schema needs a type")
    if out["type"] == "array" and "items" not in out:
        raise SchemaConversionError(f"{path}: an array needs items")
    if section_defaults and out["type"] == "object" and "properties" in out:
        required = set(out.get("required", ()))
        # `X | None = None` is a section that may be absent, and absent means something (a step without a
        # pause, a metric without a prometheus query): it gets no default.
        absent = {name for name, sub in node["properties"].items() if sub.get("default", ...) is None}
        for name, prop in out["properties"].items():
            if name in absent:
                continue
            # pydantic writes no default for a `default_factory` section. `default: {}` lets the API server
            # create the section and then fill in its fields' own defaults, exactly as the model does; it
            # is only equivalent when the section has no required fields (the test checks the factory).
            if name not in required and prop["type"] == "object" and "default" not in prop:
                if prop.get("required"):
                    raise SchemaConversionError(f"{path}.{name}: optional section with required fields")
                out["properties"][name] = _ordered({**prop, "default": {}})
    return _ordered(out)


def _ordered(node: Schema) -> Schema:
    return {key: node[key] for key in _KEY_ORDER if key in node}


# --- CEL rules --------------------------------------------------------------------------------------------
# The API server checks these, so `kubectl apply` refuses a resource the models would refuse, naming the same
# field (`fieldPath`). They come from the same tables as the models' check (rules.py, rollout_rules.py).


def _validation(rule: Rule[Any]) -> dict[str, str]:
    # The message repeats the field, so it reads well on its own, as `kubectl apply` prints it.
    message = f"{rule.field}: {rule.static_message}"
    return {"rule": rule.cel, "message": message, "fieldPath": "." + rule.field, "reason": "FieldValueInvalid"}


def _on_create(validation: dict[str, Any]) -> dict[str, Any]:
    """A rule checked when the object is created only. For rules on the name, which never changes: the API
    server runs the root's rules on every write, status and finalizer patches included, so an object stored
    before the rule existed would otherwise be left without a status it can be given and with a finalizer
    that cannot be removed."""
    return {**validation, "rule": f"oldSelf.hasValue() || ({validation['rule']})", "optionalOldSelf": True}


#: What a running job is made of; changing it would make the checkpoint and the devices' work meaningless.
#: Mutable: suspend, activeDeadlineSeconds and aggregator (a new image or resources restarts the pod, which
#: resumes from its checkpoint).
IMMUTABLE_FIELDS = (
    "rounds",
    "seed",
    "model",
    "training",
    "cohort",
    "aggregation",
    "evaluation",
    "simulation",
    "privacy",
)


def _with_immutable_fields(spec: Schema, names: Sequence[str], noun: str) -> Schema:
    properties = dict(spec["properties"])
    for name in names:
        rule = {"rule": "self == oldSelf", "message": f"{name} is immutable once the {noun} exists"}
        properties[name] = _ordered({**properties[name], "x-kubernetes-validations": [rule]})
    return {**spec, "properties": properties}


# --- the resources ------------------------------------------------------------------------------------------

_READY = '.status.conditions[?(@.type=="Ready")].status'
_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


@dataclass(frozen=True)
class Resource:
    """One custom resource: what its CRD is generated from."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    noun: str  # what an immutability message calls one: "job"
    description: str
    spec_model: type[BaseModel]
    spec_description: str
    status_model: type[BaseModel]
    status_description: str
    rules: tuple[Rule[Any], ...]
    printer_columns: tuple[dict[str, Any], ...]
    immutable_fields: tuple[str, ...] = ()
    name_rules: tuple[Rule[Any], ...] = ()  # CEL rules on `self.metadata.name`, at the schema's root
    source: str = ""  # the module named in the generated file's header

    @property
    def header(self) -> str:
        return f"# Generated by make crds from {self.source} — do not edit.\n"


FEDERATED_JOB = Resource(
    kind=KIND,
    plural=PLURAL,
    singular=SINGULAR,
    short_names=tuple(SHORT_NAMES),
    noun="job",
    description="A federated training job over a fleet of devices.",
    spec_model=FederatedJobSpec,
    spec_description="What to train, on which fleet, and how rounds are run and aggregated.",
    status_model=FederatedJobStatus,
    status_description="Observed state: conditions and endpoint from the operator, progress from the aggregator.",
    rules=CROSS_FIELD_RULES,
    # `kubectl get federatedjobs`: progress at a glance; `-o wide` (priority 1) adds the details.
    printer_columns=(
        {"name": "Round", "type": "integer", "jsonPath": ".status.round", "description": "Rounds completed"},
        {"name": "Target", "type": "integer", "jsonPath": ".spec.rounds", "description": "Rounds to run"},
        {"name": "Participants", "type": "integer", "jsonPath": ".status.participants"},
        {"name": "Epsilon", "type": "number", "jsonPath": ".status.epsilonSpent", "description": "DP ε spent"},
        {"name": "Accuracy", "type": "number", "jsonPath": ".status.accuracy"},
        {"name": "Ready", "type": "string", "jsonPath": _READY},
        _AGE,
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "priority": 1},
        {"name": "Strategy", "type": "string", "jsonPath": ".spec.aggregation.strategy", "priority": 1},
        {"name": "Devices", "type": "integer", "jsonPath": ".spec.simulation.devices", "priority": 1},
        {"name": "Dropped", "type": "integer", "jsonPath": ".status.dropped", "priority": 1},
        {"name": "Churn", "type": "number", "jsonPath": ".status.churn", "priority": 1},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
    ),
    immutable_fields=IMMUTABLE_FIELDS,
    name_rules=NAME_RULES,
    source="fedfleet.api.federatedjob",
)

MODEL_ROLLOUT = Resource(
    kind=modelrollout.KIND,
    plural="modelrollouts",
    singular="modelrollout",
    short_names=("mro",),
    noun="rollout",
    description="Ships a trained model to a device fleet in canary steps, gated by what the devices measure.",
    spec_model=ModelRolloutSpec,
    spec_description="What to roll out, to which devices, in which steps, gated by which metrics.",
    status_model=ModelRolloutStatus,
    status_description="Observed state: step, weight, versions, analysis runs and conditions, from the operator.",
    rules=ROLLOUT_RULES,
    # `kubectl get modelrollouts`: where each rollout stands; `-o wide` adds why and for which fleet.
    printer_columns=(
        {"name": "Step", "type": "integer", "jsonPath": ".status.stepIndex", "description": "Current step"},
        {"name": "Weight", "type": "integer", "jsonPath": ".status.weight", "description": "Percent on the canary"},
        {"name": "Stable", "type": "string", "jsonPath": ".status.stable"},
        {"name": "Canary", "type": "string", "jsonPath": ".status.candidate"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        _AGE,
        {"name": "Revision", "type": "integer", "jsonPath": ".status.revision", "priority": 1},
        {"name": "Fleet", "type": "string", "jsonPath": ".spec.fleet", "priority": 1},
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
        {"name": "Ready", "type": "string", "jsonPath": _READY, "priority": 1},
    ),
    source="fedfleet.api.modelrollout",
)

#: By the name `python -m fedfleet.api.crd NAME` takes.
RESOURCES = {"federatedjob": FEDERATED_JOB, "modelrollout": MODEL_ROLLOUT}


def spec_schema(resource: Resource = FEDERATED_JOB) -> Schema:
    schema = structural_schema(resource.spec_model.model_json_schema(by_alias=True))
    schema["description"] = resource.spec_description
    schema["x-kubernetes-validations"] = [_validation(rule) for rule in resource.rules]
    return _ordered(_with_immutable_fields(schema, resource.immutable_fields, resource.noun))


def status_schema(resource: Resource = FEDERATED_JOB) -> Schema:
    schema = structural_schema(
        resource.status_model.model_json_schema(by_alias=True), path="status", section_defaults=False
    )
    schema["description"] = resource.status_description
    return _ordered(schema)


def metadata_schema(resource: Resource = FEDERATED_JOB) -> Schema:
    """`metadata` at the root: the API server checks it itself; a structural schema may declare only `name`
    and `generateName` there. `name` is declared when a rule names it: a CEL fieldPath must exist in the schema."""
    if not resource.name_rules:
        return {"type": "object"}
    return {"type": "object", "properties": {"name": {"type": "string"}}}


def build_crd(resource: Resource) -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of `resource`, as a plain dict."""
    root: Schema = {
        "description": resource.description,
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": metadata_schema(resource),
            "spec": spec_schema(resource),
            "status": status_schema(resource),
        },
        "required": ["spec"],
    }
    if resource.name_rules:
        # At the root: only there may CEL read metadata.name (so `kubectl apply` refuses a name that no child
        # could be created from, naming metadata.name).
        root["x-kubernetes-validations"] = [_on_create(_validation(rule)) for rule in resource.name_rules]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{resource.plural}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(column) for column in resource.printer_columns],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def build_federatedjob_crd() -> dict[str, Any]:
    return build_crd(FEDERATED_JOB)


def build_modelrollout_crd() -> dict[str, Any]:
    return build_crd(MODEL_ROLLOUT)


class _NoAliasDumper(yaml.SafeDumper):
    """A shared sub-schema must be written out in full: anchors and aliases would confuse readers and diffs."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_crd_yaml(resource: Resource = FEDERATED_JOB) -> str:
    """The CRD as the YAML committed in crds/<singular>.yaml, header comment included."""
    body = yaml.dump(
        build_crd(resource),
        Dumper=_NoAliasDumper,
        sort_keys=False,
        allow_unicode=True,
        width=1000,  # one line per description: folded scalars make diffs of the generated file noisy
        default_flow_style=False,
    )
    return resource.header + body


def main(argv: Sequence[str] = ()) -> int:
    """`python -m fedfleet.api.crd [federatedjob|modelrollout]`: print that CRD (FederatedJob by default)."""
    names = list(argv) or ["federatedjob"]
    if len(names) != 1 or names[0] not in RESOURCES:
        sys.stderr.write(f"usage: python -m fedfleet.api.crd [{'|'.join(RESOURCES)}]\n")
        return 2
    # Bytes, not text: the descriptions hold Greek letters, and a C locale must not break `make crds`.
    sys.stdout.buffer.write(render_crd_yaml(RESOURCES[names[0]]).encode("utf-8"))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
