"""The gateway's keys as `prepare_security` reads them from the config: the admin secret always, the publish
secret when the config names one, each problem named by its config field."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedfleet.api.aggregator_config import TlsSection
from fedfleet.gateway.app import prepare_security
from fedfleet.gateway.config import GatewayAuth, GatewayConfig
from fedfleet.security.tokens import new_key, read_key, write_key


def config(root: Path, publish: Path | None, *, generate: bool = False) -> GatewayConfig:
    auth = GatewayAuth(
        token_key=root / "token.key", admin_token=root / "admin.token", publish_token=publish, generate=generate
    )
    tls = TlsSection(cert=root / "tls/server.crt", key=root / "tls/server.key", ca=root / "tls/ca.crt", generate=True)
    return GatewayConfig(tls=tls, auth=auth, fleets=["default"])


def test_generate_creates_the_publish_token_and_it_differs_from_the_admin_token(tmp_path: Path) -> None:
    security = prepare_security(config(tmp_path, tmp_path / "publish.token", generate=True))
    assert security.admin_secret == read_key(tmp_path / "admin.token").hex()
    assert security.publish_secret == read_key(tmp_path / "publish.token").hex()
    assert security.publish_secret != security.admin_secret
    assert (tmp_path / "publish.token").stat().st_mode & 0o077 == 0  # as `fedfleet token keygen` writes it


def test_without_a_publish_token_there_is_only_the_admin_secret(tmp_path: Path) -> None:
    security = prepare_security(config(tmp_path, None, generate=True))
    assert security.publish_secret is None and len(bytes.fromhex(security.admin_secret)) == 32
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["admin.token", "token.key"]


def test_a_publish_token_holding_the_admin_secret_is_refused_naming_the_field(tmp_path: Path) -> None:
    secret = new_key()
    for name in ("token.key", "admin.token", "publish.token"):
        write_key(tmp_path / name, secret if name != "token.key" else new_key())
    with pytest.raises(ValueError, match=r"^auth\.publishToken: .*publish\.token holds the admin secret"):
        prepare_security(config(tmp_path, tmp_path / "publish.token"))


@pytest.mark.parametrize(("content", "said"), [(None, "cannot read"), ("not hex\n", "must be hex text")])
def test_an_unusable_publish_token_file_is_named(tmp_path: Path, content: str | None, said: str) -> None:
    write_key(tmp_path / "token.key", new_key())
    write_key(tmp_path / "admin.token", new_key())
    if content is not None:
        (tmp_path / "publish.token").write_text(content)
    with pytest.raises(ValueError) as info:
        prepare_security(config(tmp_path, tmp_path / "publish.token"))
    assert str(info.value).startswith("auth.publishToken: ") and said in str(info.value)
