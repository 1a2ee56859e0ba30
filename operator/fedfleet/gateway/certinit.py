"""The gateway pod's init step: a server certificate for this pod, and the final gateway configuration.

    python -m fedfleet.gateway.certinit --ca-dir /etc/fedfleet/gateway/ca \\
        --template /etc/fedfleet/gateway/config/gateway.yaml --out-dir /etc/fedfleet/gateway/run \\
        --listen-host $(POD_IP) --host <service> --host <service>.<namespace>.svc ...

The chart keeps the gateway's CA in a Secret that outlives upgrades (devices, aggregators and the operator
trust that CA), but the pod's own address is known only once the pod runs, so the server certificate is
issued here, at every start, for the pod IP and the Service's names. This step alone mounts the CA key.

It writes `server.crt`, `server.key` and `ca.crt` into --out-dir, and `gateway.yaml`: the template (read and
checked with the gateway's own model) listening on --listen-host (gRPC and HTTP), its TLS files those just
written, and every absolute path resolved under $FEDFLEET_ROOT (fedfleet.api.pod_environment), so the same pod
runs in a container and on the local node agent. Exit status 0, or 2 with one line naming what is wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from fedfleet.api import strict_yaml
from fedfleet.api.aggregator_config import ConfigError, Endpoint, TlsSection
from fedfleet.api.manifest import describe_validation_error
from fedfleet.api.pod_environment import under_root
from fedfleet.api.strict_yaml import StrictYamlError
from fedfleet.persist.atomic import atomic_write_bytes
from fedfleet.security.certs import TlsFiles, read_ca, write_issued

from .config import GatewayConfig, parse_gateway_config

EXIT_BAD_INPUT = 2
CONFIG_FILE = "gateway.yaml"
ANY_HOSTS = ("0.0.0.0", "::", "")


class InitError(Exception):
    pass


def finalize_config(
    template: GatewayConfig, listen_host: str, tls: TlsFiles, environ: Mapping[str, str]
) -> GatewayConfig:
    """The template listening on `listen_host`, serving the certificate in `tls`, with absolute paths
    resolved under FEDFLEET_ROOT (pure). ConfigError for a host that is not one."""
    try:
        listen = Endpoint(host=listen_host, port=template.listen.port)
        http = None if template.http is None else Endpoint(host=listen_host, port=template.http.port)
    except ValidationError as exc:
        raise ConfigError(f"--listen-host: {describe_validation_error(exc)}") from None
    tls_section = TlsSection(cert=tls.server_cert, key=tls.server_key, ca=tls.ca_cert, generate=False)
    rooted = template.map_paths(lambda path: under_root(path, environ))
    return rooted.model_copy(update={"listen": listen, "http": http, "tls": tls_section})


def dump_gateway_config(config: GatewayConfig) -> str:
    """The configuration as YAML that `load_gateway_config` reads back to the same values."""
    data = config.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def prepare(
    ca_dir: Path, template: Path, out_dir: Path, listen_host: str, hosts: Sequence[str], environ: Mapping[str, str]
) -> Path:
    """Write the server certificate and the final configuration; returns the configuration's path."""
    ca_dir, template, out_dir = (under_root(p, environ) for p in (ca_dir, template, out_dir))
    try:
        ca = read_ca(ca_dir)
        text = template.read_text(encoding="utf-8")
    except ValueError as exc:
        raise InitError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InitError(f"{template}: cannot read: {exc}") from None
    tls = TlsFiles.in_dir(out_dir)
    try:
        docs = strict_yaml.load_all(text)
        if len(docs) != 1:
            raise ConfigError(f"{template}: expected one YAML document of settings, found {len(docs)}")
        config = finalize_config(parse_gateway_config(docs[0], str(template)), listen_host, tls, environ)
    except StrictYamlError as exc:
        raise InitError(f"{template}: {exc}") from None
    except ConfigError as exc:
        raise InitError(str(exc)) from None
    names = [h for h in dict.fromkeys([listen_host, *hosts]) if h not in ANY_HOSTS]
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        write_issued(tls, ca, names)
    except ValueError as exc:
        raise InitError(f"cannot issue the server certificate: {exc}") from None
    target = out_dir / CONFIG_FILE
    atomic_write_bytes(target, dump_gateway_config(config).encode("utf-8"))
    return target


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedfleet.gateway.certinit", description=__doc__.splitlines()[0])
    parser.add_argument("--ca-dir", type=Path, required=True, help="ca.crt and ca.key of the gateway's CA")
    parser.add_argument("--template", type=Path, required=True, help="gateway configuration template")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--listen-host", required=True, help="address the gateway listens on (the pod IP)")
    parser.add_argument("--host", action="append", default=[], help="another name the certificate is valid for")
    args = parser.parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        target = prepare(args.ca_dir, args.template, args.out_dir, args.listen_host, args.host, env)
    except InitError as exc:
        print(f"certinit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"certinit: wrote {target} and a server certificate for {', '.join([args.listen_host, *args.host])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
