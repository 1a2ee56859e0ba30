"""Small, valid model artifacts for tests of the format, the store and release checks (numpy only, no torch).

The sample is softmax regression on 2x2 one-channel images with two classes: the layout `build_model` gives
("logistic", (1, 2, 2), 2), so `to_module` can build it too. Ten parameters keep byte-level tests cheap.
"""

from __future__ import annotations

import numpy as np

from fedfleet.models.artifact import ArtifactHeader, ModelArtifact, ModelMetadata, encode

SAMPLE_LAYOUT = (("out.weight", (2, 4)), ("out.bias", (2,)))
SAMPLE_PARAMETERS = 10


def sample_metadata(job: str = "demo/mnist", round_number: int = 3, accuracy: float | None = 0.875) -> ModelMetadata:
    return ModelMetadata(
        job=job,
        round=round_number,
        accuracy=accuracy,
        epsilon=1.5,
        created="2026-11-29T17:41:46Z",
        source="aggregator/demo/mnist",
    )


def sample_artifact(seed: int = 0, job: str = "demo/mnist") -> ModelArtifact:
    weights = np.random.default_rng(seed).standard_normal(SAMPLE_PARAMETERS).astype(np.float32)
    header = ArtifactHeader(
        architecture="logistic",
        image_shape=(1, 2, 2),
        num_classes=2,
        layout=SAMPLE_LAYOUT,
        metadata=sample_metadata(job),
    )
    return ModelArtifact(header, weights)


def sample_bytes(seed: int = 0, job: str = "demo/mnist") -> bytes:
    return encode(sample_artifact(seed, job))
