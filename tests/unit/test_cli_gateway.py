"""`fedfleet gateway` and `fedfleet token issue --fleet`, run in process: bad input exits 2 with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedfleet.cli import EXIT_BAD_INPUT, EXIT_OK, main
from fedfleet.security.tokens import TokenVerifier, fleet_identity, new_key, write_key


def test_token_issue_for_a_fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = new_key()
    write_key(tmp_path / "token.key", key)
    code = main(["token", "issue", "--key", str(tmp_path / "token.key"), "--fleet", "phones", "--device", "dev-7"])
    assert code == EXIT_OK
    claims = TokenVerifier(key, fleet_identity("phones")).verify(capsys.readouterr().out.strip())
    assert claims.device_id == "dev-7"
    with pytest.raises(SystemExit) as info:
        main(["token", "issue", "--key", "k", "--fleet", "a", "--job", "b", "--device", "d"])
    assert info.value.code == EXIT_BAD_INPUT
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_bad_gateway_config_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("fleets: [default]\nlimits: {maxAttributes: 0}\n")
    assert main(["gateway", "--config", str(config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "limits.maxAttributes: must be at least 1" in err and err.count("\n") == 1
