"""Start and stop a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on 127.0.0.1.

Everything lives in one state directory: certificates, etcd's data, logs, the process ids and an admin
kubeconfig at ``<state>/kubeconfig``. Nothing is read from ``~/.kube`` or an inherited ``KUBECONFIG``.

    python e2e/controlplane/cluster.py up --state-dir /tmp/ff      # prints `export KUBECONFIG=...`
    python e2e/controlplane/cluster.py status --state-dir /tmp/ff
    python e2e/controlplane/cluster.py down --state-dir /tmp/ff

``up`` on a state directory that was stopped restarts it with the same certificates and etcd data, so a
dev cluster survives ``down``/``up``; remove the directory for a clean one. The binaries come from
``build.sh`` (cached by version) unless a bin directory is given.

There is no kubelet and no scheduler here: ``e2e/nodeagent/agent.py`` plays both. With ``--prometheus``
(``up(..., prometheus=True)``) a Prometheus server runs beside the API server and discovers the pods to scrape
through the API server (see prometheus_config.py); its URL is in ``<state>/prometheus/address``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import prometheus_config
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
HOST = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/24"  # only ever written into config: nothing is sent to these addresses
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
AGENT = "node-agent"  # optional, for a dev cluster whose pods should run: e2e/nodeagent/agent.py
AGENT_SCRIPT = HERE.parent / "nodeagent" / "agent.py"
DEFAULT_IMAGE_MAP = HERE.parent / "nodeagent" / "images.yaml"
ADMIN_USER = "fedfleet-admin"
PROMETHEUS = "prometheus"  # optional too: started last, stopped first


class ClusterError(RuntimeError):
    """The control plane could not be started; the message names the component and its log file."""


@dataclass(frozen=True)
class ControlPlane:
    """A running control plane, as the tests and the node agent need to reach it."""

    state_dir: Path
    bin_dir: Path
    kubeconfig: Path
    server: str  # https://127.0.0.1:<port>
    port: int
    ca_file: Path
    prometheus: str | None = None  # http://127.0.0.1:<port> when Prometheus runs beside the API server

    def binary(self, name: str) -> Path:
        return self.bin_dir / name


# ---------------------------------------------------------------------------------------------- binaries


def build(env: dict[str, str] | None = None) -> Path:
    """Build (or find cached) binaries through build.sh and return their directory."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True, env=env or None)
    return Path(out.stdout.strip().splitlines()[-1])


def build_prometheus(env: dict[str, str] | None = None) -> Path:
    """Build (or find cached) prometheus and promtool through e2e/prometheus/build.sh; return their directory."""
    script = prometheus_config.BUILD_SCRIPT
    out = subprocess.run(["bash", str(script)], check=True, stdout=subprocess.PIPE, text=True, env=env or None)
    return Path(out.stdout.strip().splitlines()[-1])


def _resolve_bin_dir(bin_dir: Path | None) -> Path:
    if bin_dir is not None:
        return bin_dir
    from_env = os.environ.get("FEDFLEET_CONTROLPLANE_BIN")
    return Path(from_env) if from_env else build()


# ------------------------------------------------------------------------------------------ certificates


def _name(common_name: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    if private:
        tmp.chmod(0o600)
    tmp.replace(path)


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    subject: x509.Name,
    *,
    server: bool,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if server:
        # Clients reach the API server as 127.0.0.1 or localhost; the service names are there so that
        # in-cluster clients that verify the usual names work too.
        sans: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address(HOST)),
            x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
            x509.DNSName("localhost"),
        ]
        sans += [
            x509.DNSName(n)
            for n in (
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            )
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _ensure_pki(pki: Path) -> None:
    """Create the CA, serving cert, client certs and service-account key pair once per state dir."""
    if (pki / "done").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ca_name = _name("fedfleet-e2e-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(pki / "ca.key", _pem_key(ca_key), private=True)
    _write(pki / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))

    certs = {
        "apiserver": (_name("kube-apiserver"), True),
        "admin": (_name(ADMIN_USER, "system:masters"), False),
        # The bootstrap RBAC policy grants the controller manager's own role to exactly this user name.
        "controller-manager": (_name("system:kube-controller-manager"), False),
    }
    for stem, (subject, server) in certs.items():
        key, cert = _issue(ca_key, ca_cert, subject, server=server)
        _write(pki / f"{stem}.key", _pem_key(key), private=True)
        _write(pki / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM))

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(pki / "sa.key", _pem_key(sa_key), private=True)
    sa_pub = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write(pki / "sa.pub", sa_pub)
    (pki / "done").touch()


def _kubeconfig(server: str, pki: Path, user: str, stem: str) -> str:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "fedfleet-e2e", "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")}}
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(f"{stem}.crt"), "client-key-data": b64(f"{stem}.key")},
            }
        ],
        "contexts": [{"name": "fedfleet-e2e", "context": {"cluster": "fedfleet-e2e", "user": user}}],
        "current-context": "fedfleet-e2e",
    }
    return yaml.safe_dump(config, sort_keys=False)


# --------------------------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def _pid_alive(pid: int, state_dir: Path) -> bool:
    """True if pid runs and is one of ours: its command line names our state dir (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(state_dir).encode() in cmdline


def _read_state(state_dir: Path) -> dict[str, int]:
    path = state_dir / "state.json"
    if not path.exists():
        return {}
    data: dict[str, int] = json.loads(path.read_text())
    return data


def _write_state(state_dir: Path, state: dict[str, int]) -> None:
    _write(state_dir / "state.json", json.dumps(state, indent=2).encode())


def _ports(state: dict[str, int]) -> dict[str, int]:
    """Reuse the ports of the last run when they are still free, so a restarted dev cluster keeps its URL."""
    ports = {}
    for name in ("etcd_client", "etcd_peer", "apiserver", "controller_manager", PROMETHEUS):
        old = state.get(f"port_{name}")
        ports[name] = old if old and _port_is_free(old) else _free_port()
    return ports


def _spawn(
    name: str, argv: Sequence[str], state_dir: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log = open(state_dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it from here
    with log:
        # A session of its own: `down` signals the whole group, and a Ctrl-C in the caller's terminal
        # does not kill the cluster half-way.
        return subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )


def _tls_context(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def _get(url: str, ctx: ssl.SSLContext | None, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


def _apply(server: str, ctx: ssl.SSLContext, obj: dict[str, object], timeout: float = 10.0) -> None:
    """Server-side apply of one object: created when missing, brought back to this content when it drifted."""
    path = prometheus_config.object_path(obj)
    request = urllib.request.Request(
        f"{server}{path}?fieldManager=fedfleet-e2e&force=true",
        data=json.dumps(obj).encode(),
        method="PATCH",
        headers={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=timeout):
            return
    except urllib.error.HTTPError as err:
        raise ClusterError(f"applying {path} for Prometheus failed: {err.code} {err.read()[:300]!r}") from None


def _wait(
    what: str,
    check: Callable[[], bool],
    procs: dict[str, subprocess.Popen[bytes]],
    state_dir: Path,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise ClusterError(
                    f"{name} exited with code {proc.returncode} while waiting for {what}; "
                    f"see {state_dir / 'logs' / (name + '.log')}"
                )
        try:
            if check():
                return
        except (OSError, ValueError) as err:
            last_error = str(err)
        time.sleep(0.25)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} ({last_error}); logs in {state_dir}/logs")


def _etcd_argv(bin_dir: Path, data: Path, ports: dict[str, int]) -> list[str]:
    client = f"http://{HOST}:{ports['etcd_client']}"
    peer = f"http://{HOST}:{ports['etcd_peer']}"
    return [
        str(bin_dir / "etcd"),
        "--name=fedfleet",
        f"--data-dir={data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=fedfleet={peer}",
        "--log-level=warn",
        # Test and dev clusters are disposable; skipping fsync keeps etcd from stalling on a shared disk.
        "--unsafe-no-fsync",
    ]


def _apiserver_argv(bin_dir: Path, state_dir: Path, ports: dict[str, int]) -> list[str]:
    pki = state_dir / "pki"
    return [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers=http://{HOST}:{ports['etcd_client']}",
        f"--bind-address={HOST}",
        f"--advertise-address={HOST}",
        f"--secure-port={ports['apiserver']}",
        f"--cert-dir={state_dir / 'apiserver-certs'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        "--authorization-mode=Node,RBAC",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        # The `kubernetes` Service would get 127.0.0.1 as its endpoint, which endpoint validation rejects
        # (loopback); with no kube-proxy nothing would route to it anyway. Pods reach the API server
        # through KUBERNETES_SERVICE_HOST/PORT, which the node agent sets to the real address.
        "--endpoint-reconciler-type=none",
        "--profiling=false",
    ]


def _controller_manager_argv(bin_dir: Path, state_dir: Path, ports: dict[str, int]) -> list[str]:
    pki = state_dir / "pki"
    kubeconfig = state_dir / "controller-manager.kubeconfig"
    return [
        str(bin_dir / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={HOST}",
        f"--secure-port={ports['controller_manager']}",
        f"--cert-dir={state_dir / 'controller-manager-certs'}",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--controllers=*",
        "--leader-elect=false",
        "--profiling=false",
    ]


# ---------------------------------------------------------------------------------------------- Prometheus


def _prometheus_dir(state_dir: Path) -> Path:
    return state_dir / "prometheus"


def prometheus_address(state_dir: Path) -> str | None:
    """The URL of the Prometheus that `up(..., prometheus=True)` started in state_dir, if it runs."""
    state_dir = state_dir.resolve()
    pid = _read_state(state_dir).get(f"pid_{PROMETHEUS}")
    address = _prometheus_dir(state_dir) / "address"
    if not pid or not _pid_alive(pid, state_dir) or not address.exists():
        return None
    return address.read_text().strip()


def _discovery_token(
    server: str, ctx: ssl.SSLContext, procs: dict[str, subprocess.Popen[bytes]], state_dir: Path, timeout: float
) -> str:
    """Apply the discovery account and return its token, once the token controller has filled it in."""
    for obj in prometheus_config.discovery_objects():
        _apply(server, ctx, obj)
    secret_url = (
        f"{server}/api/v1/namespaces/{prometheus_config.DISCOVERY_NAMESPACE}"
        f"/secrets/{prometheus_config.DISCOVERY_TOKEN_SECRET}"
    )
    token: list[str] = []

    def filled() -> bool:
        code, body = _get(secret_url, ctx)
        data = json.loads(body).get("data", {}) if code == 200 else {}
        if "token" in data:
            token.append(base64.b64decode(data["token"]).decode())
        return bool(token)

    _wait("the Prometheus discovery token", filled, procs, state_dir, timeout)
    return token[0]


def _start_prometheus(
    state_dir: Path,
    prometheus_bin: Path,
    port: int,
    server: str,
    ctx: ssl.SSLContext,
    record: Callable[[str, subprocess.Popen[bytes]], None],
    procs: dict[str, subprocess.Popen[bytes]],
    timeout: float,
) -> None:
    home = _prometheus_dir(state_dir)
    (home / "data").mkdir(parents=True, exist_ok=True)
    token = _discovery_token(server, ctx, procs, state_dir, timeout)
    kubeconfig = home / "discovery.kubeconfig"
    ca_pem = (state_dir / "pki" / "ca.crt").read_bytes()
    _write(kubeconfig, prometheus_config.discovery_kubeconfig(server, ca_pem, token).encode(), private=True)
    config_file = home / "prometheus.yml"
    _write(config_file, yaml.safe_dump(prometheus_config.prometheus_config(kubeconfig), sort_keys=False).encode())
    argv = prometheus_config.prometheus_argv(prometheus_bin, config_file, home / "data", HOST, port)
    # Discovery reads only the kubeconfig named in its config; leave nothing else for it to fall back to.
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    record(PROMETHEUS, _spawn(PROMETHEUS, argv, state_dir, env=env))
    url = f"http://{HOST}:{port}"
    _wait("Prometheus /-/ready", lambda: _get(url + "/-/ready", None)[0] == 200, procs, state_dir, timeout)
    _write(home / "address", (url + "\n").encode())


# ---------------------------------------------------------------------------------------------- public API


def status(state_dir: Path) -> dict[str, bool]:
    """Which components of the control plane in state_dir are running (the optional ones if ever started)."""
    state_dir = state_dir.resolve()
    state = _read_state(state_dir)
    names = [*COMPONENTS, *(name for name in (AGENT, PROMETHEUS) if f"pid_{name}" in state)]
    return {name: bool(state.get(f"pid_{name}")) and _pid_alive(state[f"pid_{name}"], state_dir) for name in names}


def _describe(state_dir: Path, bin_dir: Path) -> ControlPlane:
    port = _read_state(state_dir)["port_apiserver"]
    return ControlPlane(
        state_dir=state_dir,
        bin_dir=bin_dir,
        kubeconfig=state_dir / "kubeconfig",
        server=f"https://{HOST}:{port}",
        port=port,
        ca_file=state_dir / "pki" / "ca.crt",
        prometheus=prometheus_address(state_dir),
    )


def up(
    state_dir: Path,
    bin_dir: Path | None = None,
    timeout: float = 120.0,
    image_map: Path | None = None,
    *,
    prometheus: bool = False,
    prometheus_bin: Path | None = None,
) -> ControlPlane:
    """Start etcd, kube-apiserver and kube-controller-manager; return once the API serves and the
    controllers work (the `default` ServiceAccount exists). A running cluster is returned as it is.

    With image_map, also start the node agent (node `fedfleet-node`, pods under <state>/node) so that
    pods run; tests start their own agent instead. With prometheus, also start Prometheus (from
    prometheus_bin, default: e2e/prometheus/build.sh's cache) once it answers /-/ready; a running cluster
    without it gets it added."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    bin_dir = _resolve_bin_dir(bin_dir).resolve()
    prometheus_bin = (prometheus_bin or build_prometheus()).resolve() if prometheus else None
    running = status(state_dir)
    core_up = all(running.get(name, False) for name in COMPONENTS) and (image_map is None or running.get(AGENT))
    if core_up and (not prometheus or running.get(PROMETHEUS)):
        return _describe(state_dir, bin_dir)
    if not core_up and any(running.values()):
        down(state_dir)  # a half-running cluster is restarted whole rather than patched up

    (state_dir / "logs").mkdir(exist_ok=True)
    pki = state_dir / "pki"
    _ensure_pki(pki)
    old_state = _read_state(state_dir)
    ports = _ports(old_state)  # a running component's port is not free, but only Prometheus' is used then
    if core_up:
        state = {**old_state, f"port_{PROMETHEUS}": ports[PROMETHEUS]}
    else:
        state = {f"port_{k}": v for k, v in ports.items()}
    server = f"https://{HOST}:{state['port_apiserver']}"
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def record(name: str, proc: subprocess.Popen[bytes]) -> None:
        procs[name] = proc
        state[f"pid_{name}"] = proc.pid
        _write_state(state_dir, state)  # written before waiting, so `down` can clean up a failed start

    ctx = _tls_context(pki)
    try:
        if not core_up:
            _start_core(state_dir, bin_dir, ports, record, procs, ctx, timeout, image_map)
        if prometheus_bin is not None:
            _start_prometheus(state_dir, prometheus_bin, ports[PROMETHEUS], server, ctx, record, procs, timeout)
    except BaseException:
        # Whatever this call started goes again; a cluster that ran before keeps running without Prometheus.
        if core_up:
            _stop(state_dir, PROMETHEUS, 15.0)
        else:
            down(state_dir)
        raise
    return _describe(state_dir, bin_dir)


def _start_core(
    state_dir: Path,
    bin_dir: Path,
    ports: dict[str, int],
    record: Callable[[str, subprocess.Popen[bytes]], None],
    procs: dict[str, subprocess.Popen[bytes]],
    ctx: ssl.SSLContext,
    timeout: float,
    image_map: Path | None,
) -> None:
    pki = state_dir / "pki"
    server = f"https://{HOST}:{ports['apiserver']}"
    _write(state_dir / "kubeconfig", _kubeconfig(server, pki, ADMIN_USER, "admin").encode(), private=True)
    _write(
        state_dir / "controller-manager.kubeconfig",
        _kubeconfig(server, pki, "system:kube-controller-manager", "controller-manager").encode(),
        private=True,
    )
    record("etcd", _spawn("etcd", _etcd_argv(bin_dir, state_dir / "etcd", ports), state_dir))
    etcd_health = f"http://{HOST}:{ports['etcd_client']}/health"

    def etcd_ok() -> bool:
        with urllib.request.urlopen(etcd_health, timeout=2) as resp:
            return b'"health":"true"' in resp.read()

    _wait("etcd /health", etcd_ok, procs, state_dir, timeout)

    record("kube-apiserver", _spawn("kube-apiserver", _apiserver_argv(bin_dir, state_dir, ports), state_dir))
    _wait("kube-apiserver /readyz", lambda: _get(server + "/readyz", ctx)[0] == 200, procs, state_dir, timeout)

    record(
        "kube-controller-manager",
        _spawn("kube-controller-manager", _controller_manager_argv(bin_dir, state_dir, ports), state_dir),
    )
    # The serviceaccount controller creating `default` in `default` shows the controllers run and can
    # write through RBAC; the token controller is checked by the tests that mint tokens.
    sa_url = server + "/api/v1/namespaces/default/serviceaccounts/default"
    _wait("the default ServiceAccount", lambda: _get(sa_url, ctx)[0] == 200, procs, state_dir, timeout)
    if image_map is not None:
        agent = [
            sys.executable,
            str(AGENT_SCRIPT),
            f"--kubeconfig={state_dir / 'kubeconfig'}",
            f"--image-map={image_map.resolve()}",
            f"--state-dir={state_dir / 'node'}",
        ]
        record(AGENT, _spawn(AGENT, agent, state_dir))
        node_url = server + "/api/v1/nodes/fedfleet-node"
        _wait("the node agent's Node", lambda: _get(node_url, ctx)[0] == 200, procs, state_dir, timeout)


def down(state_dir: Path, timeout: float = 15.0) -> None:
    """Stop every component of the control plane in state_dir (SIGTERM, then SIGKILL). Keeps the data."""
    state_dir = state_dir.resolve()
    # One at a time, in reverse start order: Prometheus and the node agent first (it stops its pods), then
    # the controller manager and the API server, etcd last. An API server whose etcd is gone stalls its own
    # shutdown.
    for name in (PROMETHEUS, AGENT, *reversed(COMPONENTS)):
        _stop(state_dir, name, timeout)


def _stop(state_dir: Path, name: str, timeout: float) -> None:
    """Stop one component (its whole process group) and forget its pid."""
    state = _read_state(state_dir)
    pid = state.get(f"pid_{name}")
    if pid and _pid_alive(pid, state_dir):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid, state_dir) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
        if _pid_alive(pid, state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        _reap(pid)
    if name == PROMETHEUS:
        with contextlib.suppress(FileNotFoundError):
            (_prometheus_dir(state_dir) / "address").unlink()  # nobody may take a stale address for a live one
    if f"pid_{name}" in state and state_dir.exists():
        del state[f"pid_{name}"]
        _write_state(state_dir, state)


def _reap(pid: int) -> None:
    """Collect an exited child of this process so it does not linger as a zombie that still looks alive."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


# -------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--state-dir", type=Path, required=True, help="where certs, etcd data and logs live")
    parser.add_argument("--bin-dir", type=Path, help="control plane binaries (default: build.sh's cache)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    parser.add_argument(
        "--node-agent",
        nargs="?",
        const=DEFAULT_IMAGE_MAP,
        type=Path,
        metavar="IMAGE_MAP",
        help=f"also run the node agent so pods run (image map default: {DEFAULT_IMAGE_MAP.name})",
    )
    parser.add_argument(
        "--prometheus",
        action="store_true",
        help="also run Prometheus, discovering annotated pods through the API server (address in <state>/prometheus)",
    )
    parser.add_argument("--prometheus-bin", type=Path, help="prometheus binary's directory (default: build it)")
    args = parser.parse_args(argv)
    if args.command == "up":
        try:
            cp = up(
                args.state_dir,
                args.bin_dir,
                args.timeout,
                args.node_agent,
                prometheus=args.prometheus or args.prometheus_bin is not None,
                prometheus_bin=args.prometheus_bin,
            )
        except (ClusterError, subprocess.CalledProcessError) as err:
            print(f"cluster.py: {err}", file=sys.stderr)
            return 1
        print(f"export KUBECONFIG={cp.kubeconfig}")
        print(f"export FEDFLEET_CONTROLPLANE_BIN={cp.bin_dir}")
        print(f'export PATH="{cp.bin_dir}:$PATH"  # kubectl and helm of this control plane')
        if cp.prometheus:
            print(f"export FEDFLEET_PROMETHEUS={cp.prometheus}")
        return 0
    if args.command == "down":
        down(args.state_dir)
        return 0
    running = status(args.state_dir)
    for name, alive in running.items():
        print(f"{name}: {'running' if alive else 'stopped'}")
    if all(running.values()):
        print(f"export KUBECONFIG={args.state_dir.resolve() / 'kubeconfig'}")
    return 0 if all(running.values()) else 3


if __name__ == "__main__":
    sys.exit(main())
