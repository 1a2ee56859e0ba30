"""`fedfleet publish MODEL.pt --gateway ...`, run in process against a live gateway on loopback: it prints the
digest the gateway stores, takes the job, accuracy and ε from the run beside the model, and fails with one
line (2 for bad input, 1 when the gateway cannot take it)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedfleet.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, main
from fedfleet.models.artifact import decode
from fedfleet.models.job_model import JobModel
from fedfleet.security.tokens import write_key
from gateway_support import LiveGateway, start_gateway


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    """A gateway serving on its own event loop in a thread, as a separate process would."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    gateway = asyncio.run_coroutine_threadsafe(start_gateway(tmp_path_factory.mktemp("gateway")), loop).result(60)
    try:
        yield gateway
    finally:
        asyncio.run_coroutine_threadsafe(gateway.app.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def run_dir(tmp_path: Path, summary: dict[str, Any] | None) -> Path:
    """What `fedfleet run` leaves: model.pt and summary.json side by side."""
    job_model = JobModel("logistic", (1, 8, 8), 10, init_seed=5)
    model = job_model.save(tmp_path / "demo" / "model.pt", job_model.initial_weights().astype(np.float32), 4)
    if summary is not None:
        (tmp_path / "demo" / "summary.json").write_text(json.dumps(summary))
    return model


def credentials(tmp_path: Path, live: LiveGateway) -> list[str]:
    (tmp_path / "ca.crt").write_bytes(live.ca_pem)
    write_key(tmp_path / "admin.token", bytes.fromhex(live.admin_secret))
    return ["--gateway", live.target, "--ca", str(tmp_path / "ca.crt"), "--admin-token", str(tmp_path / "admin.token")]


def test_publish_prints_the_digest_the_gateway_stores_with_the_runs_facts(
    tmp_path: Path, live: LiveGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    model = run_dir(tmp_path, {"job": "mnist-fedavg", "final_accuracy": 0.93, "epsilon": 2.5, "stop_reason": None})
    assert main(["publish", str(model), *credentials(tmp_path, live)]) == EXIT_OK
    digest = capsys.readouterr().out.strip()
    assert live.store.has(digest)
    stored = decode(live.store.read_chunk(digest, 0, live.store.size(digest)))
    meta = stored.metadata
    assert (meta.job, meta.round, meta.accuracy, meta.epsilon, meta.source) == (
        "mnist-fedavg", 4, 0.93, 2.5, "file:model.pt",
    )  # fmt: skip

    # --job wins; a run that stopped early says nothing about the last weights' accuracy.
    other = run_dir(tmp_path / "other", {"job": "x", "final_accuracy": 0.5, "epsilon": None, "stop_reason": "budget"})
    assert main(["publish", str(other), *credentials(tmp_path, live), "--job", "team/named"]) == EXIT_OK
    meta = decode(live.store.read_chunk(d := capsys.readouterr().out.strip(), 0, live.store.size(d))).metadata
    assert (meta.job, meta.accuracy, meta.epsilon) == ("team/named", None, None)


def test_the_publish_token_publishes_too(tmp_path: Path, live: LiveGateway, capsys: pytest.CaptureFixture[str]) -> None:
    # The token an aggregator holds is enough for `fedfleet publish`: it may publish, and nothing else.
    write_key(tmp_path / "publish.token", bytes.fromhex(live.publish_secret))
    args = credentials(tmp_path, live)
    args[args.index("--admin-token") + 1] = str(tmp_path / "publish.token")
    assert main(["publish", str(run_dir(tmp_path, None)), *args]) == EXIT_OK
    assert live.store.has(capsys.readouterr().out.strip())


def test_a_model_outside_a_run_is_named_after_its_directory(
    tmp_path: Path, live: LiveGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    model = run_dir(tmp_path, None)
    assert main(["publish", str(model), *credentials(tmp_path, live)]) == EXIT_OK
    digest = capsys.readouterr().out.strip()
    assert decode(live.store.read_chunk(digest, 0, live.store.size(digest))).metadata.job == "demo"


def test_bad_input_exits_2_with_one_line(tmp_path: Path, live: LiveGateway, capsys: pytest.CaptureFixture[str]) -> None:
    model = run_dir(tmp_path, {"job": "j"})
    args = credentials(tmp_path, live)
    (tmp_path / "bad.token").write_text("not hex\n")
    bad_token = [*args[:-1], str(tmp_path / "bad.token")]
    (tmp_path / "garbage.pt").write_bytes(b"not a model")
    for argv, said in (
        (["publish", str(model), *bad_token], "--admin-token"),
        (["publish", str(model), *args[:3], str(tmp_path / "none.crt"), *args[4:]], "none.crt: cannot read"),
        (["publish", str(tmp_path / "garbage.pt"), *args, "--job", "j"], "not a model file fedfleet can read"),
        (["publish", str(model), "--gateway", "nohost", *args[2:]], "gateway: must be HOST:PORT"),
    ):
        assert main(argv) == EXIT_BAD_INPUT, argv
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err
    (tmp_path / "demo" / "summary.json").write_text("{broken")
    assert main(["publish", str(model), *args]) == EXIT_BAD_INPUT
    assert "not a run summary" in capsys.readouterr().err


def test_a_gateway_that_cannot_be_reached_exits_1(
    tmp_path: Path, live: LiveGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    model = run_dir(tmp_path, {"job": "j"})
    args = credentials(tmp_path, live)
    assert main(["publish", str(model), "--gateway", "127.0.0.1:1", *args[2:], "--attempts", "1"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "127.0.0.1:1" in err and "UNAVAILABLE" in err and err.count("\n") == 1
