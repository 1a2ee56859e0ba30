"""`fedfleet gateway --config`: relative paths against the file, errors naming the field and the rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedfleet.gateway.config import ConfigError, load_gateway_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_a_config_loads_with_paths_resolved_and_limits_applied(tmp_path: Path) -> None:
    config = load_gateway_config(
        write(
            tmp_path,
            "listen: {host: 127.0.0.1, port: 0}\nfleets: [default, eu-phones]\nartifactDir: store\n"
            "auth: {tokenKey: keys/token.key}\nlimits: {maxAttributes: 8}\ncheckInIntervalSeconds: 30\n",
        )
    )
    assert config.fleets == ["default", "eu-phones"]
    assert config.artifact_dir == tmp_path / "store" and config.auth.token_key == tmp_path / "keys/token.key"
    assert config.tls.cert == tmp_path / "tls/server.crt"
    settings = config.settings()
    assert settings.attributes.max_attributes == 8 and settings.check_in_interval_seconds == 30


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen: {port: 1}\n", "fleets: required field is missing"),
        ("fleets: []\n", "fleets: "),
        ("fleets: [Default]\n", "fleets.0: "),
        ("fleets: [a, a]\n", "each fleet may be named once"),
        ("fleets: [a]\nlimits: {maxWatchStreams: 0}\n", "limits.maxWatchStreams: must be at least 1"),
        ("fleets: [a]\nlimits: {downloadChunkBytes: 1048576}\n", "limits.downloadChunkBytes: must be at most"),
        ("fleets: [a]\nfleet: [b]\n", "fleet: unknown field"),
        ("fleets: [a]\nfleets: [b]\n", "duplicate key"),
        ("- fleets\n", "expected a mapping"),
        (
            "fleets: [a]\nauth: {adminToken: keys/admin.token, publishToken: keys/admin.token}\n",
            "auth.publishToken: must be another file than adminToken",
        ),
        ("fleets: [a]\nauth: {publishToken: null, publishTokn: p}\n", "auth.publishTokn: unknown field"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_gateway_config(write(tmp_path, text))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_gateway_config(tmp_path / "absent.yaml")


def test_the_publish_token_is_optional_and_resolved_like_the_other_keys(tmp_path: Path) -> None:
    old = load_gateway_config(write(tmp_path, "fleets: [a]\nauth: {adminToken: admin.token}\n"))
    assert old.auth.publish_token is None  # a config from before the publish token: only the admin token
    new = load_gateway_config(write(tmp_path, "fleets: [a]\nauth: {publishToken: keys/publish.token}\n"))
    assert new.auth.publish_token == tmp_path / "keys/publish.token"
    assert new.auth.admin_token == tmp_path / "admin.token"
