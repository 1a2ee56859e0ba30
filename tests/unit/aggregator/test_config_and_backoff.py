"""The aggregator's configuration file, and the devices' retry delays."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fedfleet.api.aggregator_config import ConfigError, load_config
from fedfleet.device.retry import Backoff

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_example_config_loads_with_paths_resolved_against_its_directory() -> None:
    config, job = load_config(EXAMPLES / "aggregator.yaml")
    assert job.metadata.name == "mnist-fedavg"
    assert config.listen.port == 50051 and config.http is not None and config.http.port == 9090
    assert config.state_dir.is_absolute() and config.state_dir.parent.parent == EXAMPLES.parent
    assert config.tls.cert.is_absolute() and config.auth.token_key.is_absolute()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("job: j.yaml\nlisten: {port: 70000}\n", "listen.port: must be at most 65535 (got 70000)"),
        ("job: j.yaml\ncolour: blue\n", "colour: unknown field"),
        ("job: j.yaml\ntimeScale: 0\n", "timeScale: must be greater than 0"),
        ("listen: {port: 1}\n", "job: required field is missing"),
        ("- a list\n", "expected a mapping"),
        ("job: [unclosed\n", "YAML syntax error"),
        ("job: missing.yaml\n", "missing.yaml: cannot read"),
        ("job: {apiVersion: fedfleet.io/v1alpha1, kind: FederatedJob, metadata: {name: x}, spec: {rounds: 0}}\n",
         "spec.rounds: must be at least 1"),
    ],
)  # fmt: skip
def test_bad_config_is_one_line_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "aggregator.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_backoff_grows_to_its_cap_with_full_jitter() -> None:
    backoff = Backoff(initial=0.1, multiplier=2.0, maximum=1.0, rng=random.Random(1))
    delays = backoff.delays()
    drawn = [next(delays) for _ in range(200)]
    caps = [min(1.0, 0.1 * 2**k) for k in range(200)]
    assert all(0 <= d <= c for d, c in zip(drawn, caps, strict=True))
    late = drawn[10:]
    assert max(late) > 0.8 and min(late) < 0.2  # spread over [0, cap], not clustered at the cap
    with pytest.raises(ValueError):
        Backoff(initial=0)
