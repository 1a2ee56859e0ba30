"""The aggregator pod's init step: a server certificate for this pod, and the final aggregator configuration.

    python -m fedfleet.operator.certinit --ca-dir /etc/fedfleet/ca --template /etc/fedfleet/config/aggregator.yaml \
        --out-dir /etc/fedfleet/run --listen-host $(POD_IP) --host $(POD_IP) --host <service>.<ns>.svc ...

The pod's IP is known only once the pod runs, so the certificate cannot come from the operator: this step
signs it with the job CA from the job's Secret (mounted into this container only). It writes `server.crt`,
`server.key` and `ca.crt` into --out-dir, and `aggregator.yaml`: the template (read and written with the
aggregator's own model, fedfleet.api.aggregator_config) with the listen addresses set to --listen-host and
every absolute path resolved under $FEDFLEET_ROOT (see fedfleet.api.pod_environment).
Exit status 0, or 2 with one line naming what is wrong.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedfleet.api.aggregator_config import AggregatorConfig, ConfigError, dump_config, read_config
from fedfleet.api.pod_environment import under_root
from fedfleet.operator import naming
from fedfleet.persist.atomic import atomic_write_bytes
from fedfleet.security.certs import KeyPair, issue_server_cert

EXIT_BAD_INPUT = 2


class InitError(Exception):
    pass


def finalize_config(template: AggregatorConfig, listen_host: str, environ: Mapping[str, str]) -> AggregatorConfig:
    """The template listening on `listen_host`, with absolute paths resolved under FEDFLEET_ROOT (pure)."""
    return template.with_listen_host(listen_host).map_paths(lambda path: under_root(path, environ))


def prepare(
    ca_dir: Path, template: Path, out_dir: Path, listen_host: str, hosts: Sequence[str], environ: Mapping[str, str]
) -> Path:
    """Write the server certificate and the final configuration; returns the configuration's path."""
    ca_dir, template, out_dir = (under_root(p, environ) for p in (ca_dir, template, out_dir))
    try:
        ca = KeyPair((ca_dir / naming.CA_CERT).read_bytes(), (ca_dir / naming.CA_KEY).read_bytes())
    except OSError as exc:
        raise InitError(f"cannot read {exc.filename}: {exc.strerror}") from None
    try:
        config = finalize_config(read_config(template), listen_host, environ)
    except ConfigError as exc:
        raise InitError(str(exc)) from None
    names = [h for h in dict.fromkeys([listen_host, *hosts]) if h and h not in ("0.0.0.0", "::")]
    try:
        server = issue_server_cert(ca, names)
    except ValueError as exc:
        raise InitError(f"cannot issue the server certificate: {exc}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / naming.CA_CERT, ca.cert_pem)
    atomic_write_bytes(out_dir / naming.SERVER_CERT, server.cert_pem)
    atomic_write_bytes(out_dir / naming.SERVER_KEY, server.key_pem)
    (out_dir / naming.SERVER_KEY).chmod(0o600)
    target = out_dir / naming.CONFIG_FILE
    atomic_write_bytes(target, dump_config(config).encode("utf-8"))
    return target


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    import os

    parser = argparse.ArgumentParser(prog="python -m fedfleet.operator.certinit", description=__doc__.splitlines()[0])
    parser.add_argument("--ca-dir", type=Path, required=True, help="ca.crt and ca.key of the job")
    parser.add_argument("--template", type=Path, required=True, help="aggregator configuration template")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--listen-host", required=True, help="address the aggregator listens on (the pod IP)")
    parser.add_argument("--host", action="append", default=[], help="another name the certificate is valid for")
    args = parser.parse_args(argv)
    try:
        env = os.environ if environ is None else environ
        target = prepare(args.ca_dir, args.template, args.out_dir, args.listen_host, args.host, env)
    except InitError as exc:
        print(f"certinit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"certinit: wrote {target} and a server certificate for {', '.join([args.listen_host, *args.host])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
