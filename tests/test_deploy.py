"""The deployment artefacts agree with the code: ``Dockerfile``, ``.dockerignore``,
``deploy/kubernetes/`` and ``deploy/istio/``.

Every manifest is parsed with PyYAML (all documents of every file) and compared with values
imported from the gateway: the serve settings and their environment names
(``gateway.app.settings``), the senders file's parser (``gateway.app.senders``), the health
service name (``gateway.contract``), the proto's methods (``identity_pb2``) and the console script
(``pyproject.toml``). Renaming a flag, the service, a method or a port without updating the
deployment fails here, not in a cluster. The image is built from the gateway's wheel alone: the
WhatsApp API emulator (``emulator/``) never ships in it.

The pod is checked as it would start: the senders file in its ConfigMap, the variables its
``*_env`` keys name (from the Secret), and the files it and the settings name (from mounted
volumes) are laid out under a temporary directory and run through the gateway's own start-up
checks (``config_from_args`` and ``prepare``).
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import functools
import json
import re
import shlex
import tomllib
from copy import deepcopy
from pathlib import Path, PurePosixPath
from typing import Any

import certifi
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2
from whatsapp.identity.v1 import identity_pb2

from gateway.app.cli import build_parser, config_from_args
from gateway.app.config import GatewayConfig
from gateway.app.senders import INFOBIP, ONPREM, Senders, parse_senders
from gateway.app.settings import (
    ENV_PREFIX,
    SECRET_VARIABLES,
    SETTINGS,
    ConfigError,
    Setting,
    env_name,
    split_host_port,
)
from gateway.app.startup import pace_of, prepare
from gateway.contract import SERVICE_NAME

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
ISTIO = ROOT / "deploy" / "istio"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# The flag-mode secrets are environment variables only, never flags (gateway.app.settings
# SECRET_VARIABLES, read by gateway.app.cli._secret).
SECRET_ENV = frozenset(
    {
        ENV_PREFIX + "UPSTREAM_PASSWORD",
        ENV_PREFIX + "UPSTREAM_TOKEN",
        ENV_PREFIX + "WEBHOOK_SECRET",
    }
)
SETTING_ENV = frozenset(setting.env for setting in SETTINGS)
# What describes flag mode's one sender, which the gateway refuses alongside a senders file (spec
# §6); test_the_gateway_refuses_every_flag_mode_setting_alongside_senders checks the list.
FLAG_MODE_FLAGS = (
    "upstream-url",
    "upstream-username",
    "upstream-password-file",
    "upstream-token-file",
    "upstream-ca-file",
    "upstream-insecure",
    "webhook-secret-file",
)
FLAG_MODE_ENV = frozenset(env_name(flag) for flag in FLAG_MODE_FLAGS) | SECRET_ENV
# What the image is built from: the gateway's wheel and nothing else (the emulator, in
# emulator/, is a separate distribution for development only).
BUILD_CONTEXT = frozenset({"pyproject.toml", "README.md", "gateway/", "generated/"})
# WhatsApp's documented request-rate limit for the whole API (spec: whatsapp-api.md, "Rate limits
# and overload"): an external fact, so it cannot be imported.
WHATSAPP_REQUESTS_PER_SECOND = 20.0
WHATSAPP_BURST = 60
# Infobip's documented limit per account (spec: whatsapp-api.md, "Infobip"), also external.
INFOBIP_REQUESTS_PER_SECOND = 10.0
# Istio's agent serves the merged metrics Prometheus scrapes (the prometheus.io annotations are
# rewritten to it), so a NetworkPolicy must keep it open.
ISTIO_AGENT_PORT = 15020
EXCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/excludeInboundPorts"
# Files in deploy/kubernetes/ that show a shape but hold placeholders; they are created out of
# band and must never be applied by kustomization.yaml.
EXAMPLES = frozenset({"secret.yaml", "whatsapp-ca.yaml"})
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]
IDENTITY_SERVICE = identity_pb2.DESCRIPTOR.services_by_name["IdentityService"]
ACKNOWLEDGE_PATH = f"/{IDENTITY_SERVICE.full_name}/AcknowledgeIdentity"
GET_PATH = f"/{IDENTITY_SERVICE.full_name}/GetIdentity"

Manifest = dict[str, Any]


# ---- reading the manifests ----------------------------------------------------------------------


def load_manifests(directory: Path) -> list[Manifest]:
    """Every YAML document in every ``*.yaml`` file of ``directory``, empty documents skipped
    (a fresh copy: parsed once per run)."""
    return deepcopy(_parsed(directory))


@functools.cache
def _parsed(directory: Path) -> list[Manifest]:
    documents: list[Manifest] = []
    for path in sorted(directory.glob("*.yaml")):
        with path.open(encoding="utf-8") as stream:
            for document in yaml.safe_load_all(stream):
                if document is None:
                    continue
                assert isinstance(document, dict), f"{path.name}: a document is not a mapping"
                document.setdefault("_file", path.name)
                documents.append(document)
    return documents


def the(kind: str, directory: Path = KUBERNETES, *, name: str | None = None) -> Manifest:
    """The one manifest of ``kind`` (and ``name``, if given) in ``directory``."""
    found = [
        m
        for m in load_manifests(directory)
        if m.get("kind") == kind and name in (None, m.get("metadata", {}).get("name"))
    ]
    what = kind if name is None else f"{kind} {name}"
    assert len(found) == 1, f"expected exactly one {what} in {directory}, found {len(found)}"
    return found[0]


def all_of(kind: str, directory: Path = KUBERNETES) -> list[Manifest]:
    return [m for m in load_manifests(directory) if m.get("kind") == kind]


def pod_labels() -> dict[str, str]:
    labels: dict[str, str] = the("Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def pod_annotations() -> dict[str, str]:
    annotations: dict[str, str] = the("Deployment")["spec"]["template"]["metadata"].get(
        "annotations", {}
    )
    return annotations


def pod_spec() -> Manifest:
    spec: Manifest = the("Deployment")["spec"]["template"]["spec"]
    return spec


def gateway_container() -> Manifest:
    containers: list[Manifest] = pod_spec()["containers"]
    assert len(containers) == 1, "the Deployment should run exactly the gateway container"
    return containers[0]


def container_port(name: str) -> int:
    ports = {p.get("name"): int(p["containerPort"]) for p in gateway_container()["ports"]}
    assert name in ports, f"no container port named {name!r}: {sorted(ports)}"
    return ports[name]


def deployment_env() -> dict[str, Manifest]:
    """The gateway container's env entries by name (each entry is ``{name, value | valueFrom}``)."""
    entries: list[Manifest] = gateway_container().get("env", [])
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"an env var is set twice: {names}"
    return {e["name"]: e for e in entries}


def setting(flag: str) -> Setting:
    for candidate in SETTINGS:
        if candidate.flag == flag:
            return candidate
    raise AssertionError(f"no serve setting {flag!r}")


def default_of(flag: str) -> object:
    return setting(flag).default


def container_args() -> list[str]:
    """The arguments the Deployment appends to the image's ``identity-gateway serve``."""
    container = gateway_container()
    assert "command" not in container, "the image's entrypoint should run the gateway"
    return [str(arg) for arg in container.get("args", [])]


def configured_setting(flag: str) -> str | None:
    """What the gateway in the pod uses for ``flag``: the container's arguments, else the
    Deployment's env var, else the image's ENV, else the code's default (None: unset)."""
    from_args = getattr(
        build_parser().parse_args(["serve", *container_args()]), setting(flag).field
    )
    if from_args is not None:
        return str(from_args)
    name = env_name(flag)
    entry = deployment_env().get(name)
    if entry is not None:
        assert "value" in entry, f"{name} should be a plain value"
        return str(entry["value"])
    image_env = dockerfile_env(final_stage(dockerfile()))
    if name in image_env:
        return image_env[name]
    default = default_of(flag)
    return None if default is None else str(default)


def effective_setting(flag: str) -> str:
    """:func:`configured_setting`, which must be set."""
    value = configured_setting(flag)
    assert value is not None, f"{env_name(flag)} is not set and has no default"
    return value


def port_of(address: str) -> int:
    return split_host_port(address, "address")[1]


def seconds(duration: str | int | float) -> float:
    """A Kubernetes or Istio duration (``15``, ``"15"``, ``"11s"``, ``"300ms"``, ``"1m"``)."""
    if isinstance(duration, int | float):
        return float(duration)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", duration.strip())
    assert match, f"not a duration: {duration!r}"
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[match.group(2)]
    return float(match.group(1)) * scale


def prestop_sleep_seconds() -> float:
    """How long the preStop hook delays SIGTERM: 0 without a hook."""
    pre_stop: Manifest | None = gateway_container().get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0.0
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command: list[str] = pre_stop.get("exec", {}).get("command", [])
    if command and PurePosixPath(command[0]).name == "sleep":
        return seconds(command[1])
    match = re.search(r"\bsleep\s+(\d+(?:\.\d+)?)", " ".join(command))
    assert match, f"cannot tell how long this preStop hook takes: {pre_stop}"
    return float(match.group(1))


def shutdown_grace() -> float:
    return float(effective_setting("shutdown-grace"))


def serving_processes() -> int:
    """Gateway processes that may serve at once: every replica plus the rollout's surge pod,
    times the workers of each. Each paces itself toward every upstream."""
    spec = the("Deployment")["spec"]
    surge = spec["strategy"]["rollingUpdate"]["maxSurge"]
    assert isinstance(surge, int), "use a pod count for maxSurge, so the share can be checked"
    return (int(spec["replicas"]) + surge) * int(effective_setting("workers"))


# ---- reading the mounted files ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mounted:
    """Where a file in the pod comes from: a key of a ConfigMap or a Secret."""

    kind: str  # "ConfigMap" or "Secret"
    name: str
    key: str
    mount_path: PurePosixPath


def volumes() -> dict[str, Manifest]:
    return {volume["name"]: volume for volume in pod_spec().get("volumes", [])}


def mounted(path: str | PurePosixPath) -> Mounted:
    """The ConfigMap or Secret key the gateway container sees at ``path``."""
    path = PurePosixPath(path)
    assert path.is_absolute(), f"{path}: the pod's files are named by absolute paths"
    for mount in gateway_container().get("volumeMounts", []):
        base = PurePosixPath(mount["mountPath"])
        if path.parent != base:
            continue
        assert "subPath" not in mount, f"{base}: a subPath mount never sees updates"
        assert mount.get("readOnly") is True, f"{base} should be mounted read-only"
        volume = volumes()[mount["name"]]
        for kind, field in (("ConfigMap", "configMap"), ("Secret", "secret")):
            if field not in volume:
                continue
            source = volume[field]
            name = source["name" if kind == "ConfigMap" else "secretName"]
            items = {item["path"]: item["key"] for item in source.get("items", [])}
            assert not items or path.name in items, f"{path}: volume {mount['name']} lacks it"
            return Mounted(kind, name, items.get(path.name, path.name), base)
        raise AssertionError(f"{path}: volume {mount['name']} is no ConfigMap or Secret")
    raise AssertionError(f"{path} is in no mounted volume")


def manifest_data(kind: str, name: str) -> dict[str, str]:
    """The keys and values of the ConfigMap or Secret ``name`` in deploy/kubernetes/."""
    found = the(kind, name=name)
    return {**found.get("data", {}), **found.get("stringData", {})}


def mounted_text(path: str | PurePosixPath) -> str:
    source = mounted(path)
    data = manifest_data(source.kind, source.name)
    assert source.key in data, f"{source.kind} {source.name} has no key {source.key!r}"
    return data[source.key]


# ---- reading the senders file -------------------------------------------------------------------


def senders_path() -> PurePosixPath:
    path = configured_setting("senders")
    assert path is not None, "the Deployment should serve senders from a file (--senders)"
    return PurePosixPath(path)


def senders_text() -> str:
    """senders.toml as the pod sees it, from its ConfigMap."""
    return mounted_text(senders_path())


def sender_tables() -> list[dict[str, Any]]:
    tables: list[dict[str, Any]] = tomllib.loads(senders_text())["senders"]
    return tables


def senders_variables() -> set[str]:
    """Every environment variable the senders file names (its ``*_env`` keys)."""
    return {
        str(value)
        for table in sender_tables()
        for key, value in table.items()
        if key.endswith("_env")
    }


def senders_files() -> dict[str, PurePosixPath]:
    """Every file the senders file names (``*_file`` keys and ``ca_file``), by sender and key."""
    return {
        f"{table['number']}.{key}": PurePosixPath(str(value))
        for table in sender_tables()
        for key, value in table.items()
        if key.endswith("_file")
    }


def dummy_environ() -> dict[str, str]:
    """A dummy value for every variable the senders file names."""
    return {name: f"dummy-{name.lower()}" for name in senders_variables()}


def parsed_senders() -> Senders:
    """The senders file through the gateway's own parser (its files are not read here)."""
    return parse_senders(senders_text(), Path("senders.toml"), dummy_environ())


# ---- the pod, laid out under a directory --------------------------------------------------------


def self_signed_pem(host: str) -> tuple[str, str]:
    """A certificate for ``host`` and its unencrypted key, in PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def mounted_directories() -> list[PurePosixPath]:
    return [PurePosixPath(m["mountPath"]) for m in gateway_container().get("volumeMounts", [])]


def moved(root: Path, value: str) -> str:
    """``value`` (a path, or ``--flag=path``) under ``root`` if it is in a mounted volume."""
    flag, equals, path = value.rpartition("=")
    inside = any(PurePosixPath(path).is_relative_to(base) for base in mounted_directories())
    return f"{flag}{equals}{root}{path}" if inside and path.startswith("/") else value


def pod_environ(root: Path) -> dict[str, str]:
    """The gateway container's environment, its files laid out under ``root``.

    Every mounted ConfigMap and Secret key is written to ``root`` + its path in the pod, with the
    examples' placeholders replaced by stand-ins: any CA bundle for WhatsApp's CA, a fresh
    certificate and key for the webhook listener. Paths in the environment and in the senders
    file are moved under ``root``; each Secret reference gets a dummy value."""
    mount_paths = mounted_directories()

    def write(path: str | PurePosixPath, text: str) -> None:
        target = Path(f"{root}{path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    for mount in gateway_container()["volumeMounts"]:
        volume = volumes()[mount["name"]]
        source = volume.get("configMap") or volume.get("secret") or {}
        kind = "ConfigMap" if "configMap" in volume else "Secret"
        data = manifest_data(kind, source.get("name") or source["secretName"])
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            write(PurePosixPath(mount["mountPath"]) / item["path"], data[item["key"]])
    for table in sender_tables():
        if "ca_file" in table:
            write(table["ca_file"], Path(certifi.where()).read_text(encoding="utf-8"))
    cert, key = configured_setting("webhook-tls-cert"), configured_setting("webhook-tls-key")
    if cert is not None and key is not None:
        cert_pem, key_pem = self_signed_pem("identity-gateway.identity.svc")
        write(cert, cert_pem)
        write(key, key_pem)
    senders = senders_path()
    text = senders_text()
    for base in mount_paths:
        text = text.replace(f'"{base}/', f'"{root}{base}/')
    write(senders, text)

    environ = dockerfile_env(final_stage(dockerfile()))
    for name, entry in deployment_env().items():
        if "value" in entry:
            environ[name] = moved(root, str(entry["value"]))
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            environ[name] = f"dummy-{name.lower()}"
    return environ


def pod_config(root: Path) -> GatewayConfig:
    """The configuration the gateway in the pod starts with (files under ``root``)."""
    environ = pod_environ(root)
    args = build_parser().parse_args(["serve", *(moved(root, a) for a in container_args())])
    return config_from_args(args, environ)


# ---- reading the Dockerfile ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    arguments: str


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, even inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        assert result, f"{instruction.keyword} before the first FROM"
        result[-1].append(instruction)
    return result


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    return stages(instructions)[-1]


def stage_name(stage: list[Instruction]) -> str | None:
    words = stage[0].arguments.split()
    return words[-1] if len(words) >= 3 and words[-2].upper() == "AS" else None


def dockerfile_env(stage: list[Instruction]) -> dict[str, str]:
    """The ENV values a stage sets (both ``ENV K=V ...`` and the legacy ``ENV K V``)."""
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword != "ENV":
            continue
        words = shlex.split(instruction.arguments)
        if "=" not in words[0]:
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


def exposed_ports(stage: list[Instruction]) -> set[int]:
    ports: set[int] = set()
    for instruction in stage:
        if instruction.keyword == "EXPOSE":
            ports.update(int(word.split("/")[0]) for word in instruction.arguments.split())
    return ports


def last(stage: list[Instruction], keyword: str) -> Instruction | None:
    found = [i for i in stage if i.keyword == keyword]
    return found[-1] if found else None


# ---- the Dockerfile -----------------------------------------------------------------------------


def test_dockerfile_base_images_are_pinned_to_exact_versions() -> None:
    instructions = dockerfile()
    names: set[str] = set()
    for stage in stages(instructions):
        words = [w for w in stage[0].arguments.split() if not w.startswith("--")]
        image = words[0]
        # FROM <an earlier stage> needs no pin; a digest is the strongest pin.
        if image not in names and "@sha256:" not in image:
            repository, _, tag = image.rpartition(":")
            assert repository, f"FROM {image} has no tag"
            assert "/" not in tag, f"FROM {image} has no tag"
            assert tag != "latest", f"FROM {image} floats"
            assert re.match(r"\d+\.\d+\.\d+", tag), f"FROM {image} is not an exact version"
        if (name := stage_name(stage)) is not None:
            names.add(name)


def test_dockerfile_installs_a_wheel_built_in_an_earlier_stage() -> None:
    all_stages = stages(dockerfile())
    assert len(all_stages) >= 2, "the image should be multi-stage"
    earlier = {stage_name(stage) for stage in all_stages[:-1]} - {None}
    final_text = " ".join(i.arguments for i in final_stage(dockerfile()))
    used = set(re.findall(r"(?:--)?from=([\w.-]+)", final_text))
    assert used & earlier, f"the final stage takes nothing from the build stages {earlier}"
    assert "--no-index" in final_text, "the final stage should install only the built wheels"


def test_dockerfile_final_stage_runs_as_a_non_root_numeric_user() -> None:
    user = last(final_stage(dockerfile()), "USER")
    assert user is not None, "the final stage has no USER: it would run as root"
    uid, _, gid = user.arguments.partition(":")
    # Numeric, so the kubelet can check runAsNonRoot without reading the image's /etc/passwd.
    assert uid.isdigit(), f"USER {user.arguments} is not numeric"
    assert int(uid) != 0, "USER is root"
    assert not gid or (gid.isdigit() and int(gid) != 0), f"USER {user.arguments}: root group"


def test_deployment_runs_as_the_image_user() -> None:
    user = last(final_stage(dockerfile()), "USER")
    assert user is not None
    uid = int(user.arguments.partition(":")[0])
    for context in (pod_spec()["securityContext"], gateway_container()["securityContext"]):
        assert context.get("runAsUser", uid) == uid


def test_dockerfile_entrypoint_runs_the_console_script_serve() -> None:
    entrypoint = last(final_stage(dockerfile()), "ENTRYPOINT")
    assert entrypoint is not None
    # Exec form (a JSON array): the gateway is PID 1 and receives SIGTERM itself, not a shell.
    command = json.loads(entrypoint.arguments)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    assert scripts.get(command[0]) == "gateway.app.cli:main", f"{command[0]} is not the CLI"
    assert command == [command[0], "serve"]
    assert build_parser().parse_args(command[1:]).command == "serve"


def test_dockerfile_stops_with_the_signal_that_drains() -> None:
    stop_signal = last(final_stage(dockerfile()), "STOPSIGNAL")
    assert stop_signal is None or stop_signal.arguments in ("SIGTERM", "15")


def test_dockerfile_exposes_the_deployment_container_ports() -> None:
    exposed = exposed_ports(final_stage(dockerfile()))
    declared = {int(p["containerPort"]) for p in gateway_container()["ports"]}
    assert exposed <= declared, f"the Deployment does not declare {sorted(exposed - declared)}"
    # The image turns webhooks off by default (no IDENTITY_GATEWAY_WEBHOOK_LISTEN), so it need
    # not expose the port the Deployment gives them.
    webhook = {container_port("webhook")} if configured_setting("webhook-listen") else set()
    missing = declared - exposed - webhook
    assert not missing, f"the image does not expose {sorted(missing)}"


def test_image_environment_names_real_settings_and_matches_exposed_ports() -> None:
    stage = final_stage(dockerfile())
    env = dockerfile_env(stage)
    gateway_vars = {k for k in env if k.startswith(ENV_PREFIX)}
    assert gateway_vars <= SETTING_ENV, f"unknown settings: {gateway_vars - SETTING_ENV}"
    exposed = exposed_ports(stage)
    listen = env.get(env_name("listen"), str(default_of("listen")))
    assert port_of(listen) in exposed
    assert port_of(listen) == port_of(str(default_of("listen")))
    metrics = env.get(env_name("metrics-listen"))
    assert metrics is not None, "the image should serve metrics by default"
    assert port_of(metrics) in exposed


def test_dockerfile_bakes_in_no_secrets() -> None:
    for instruction in dockerfile():
        if instruction.keyword not in ("ENV", "ARG", "LABEL"):
            continue
        for word in shlex.split(instruction.arguments):
            name = word.partition("=")[0]
            assert name not in SECRET_ENV, f"{instruction.keyword} {name} bakes in a secret"
            assert not re.search(r"PASSWORD|TOKEN|SECRET", name, re.IGNORECASE), name
    copied = " ".join(i.arguments for i in dockerfile() if i.keyword in ("COPY", "ADD"))
    assert not re.search(r"\.pem|\.key|password|token|secret", copied, re.IGNORECASE)


def test_the_secrets_this_file_guards_are_the_gateways_and_never_flags() -> None:
    assert {env_name(name) for name, _ in SECRET_VARIABLES} == SECRET_ENV
    assert not SECRET_ENV & SETTING_ENV, "a secret is also a flag: it would show in `ps`"


def test_runtime_image_writes_no_bytecode_and_does_not_buffer_logs() -> None:
    env = dockerfile_env(final_stage(dockerfile()))
    # The root filesystem is read-only in the pod, and log lines must reach `kubectl logs` at once.
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"


def dockerignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def in_build_context(path: str) -> bool:
    """Whether ``.dockerignore`` lets ``path`` into the build context."""
    verdict = True  # last matching pattern wins, as in Docker
    for pattern in dockerignore_patterns():
        negated = pattern.startswith("!")
        if fnmatch.fnmatch(path, pattern.removeprefix("!").rstrip("/")):
            verdict = negated
    return verdict


def test_build_context_includes_every_file_the_dockerfile_copies() -> None:
    included = in_build_context
    assert not included(".git"), ".dockerignore lets the repository's history in"
    assert not included(".venv"), ".dockerignore lets the local virtualenv in"
    copies = [i for i in dockerfile() if i.keyword == "COPY" and "--from" not in i.arguments]
    assert copies
    for copy in copies:
        for source in copy.arguments.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert included(source.rstrip("/")), f"COPY {source} but .dockerignore excludes it"


def test_build_context_allowlists_only_what_the_wheel_is_built_from() -> None:
    patterns = dockerignore_patterns()
    assert patterns[0] == "*", ".dockerignore should start by excluding everything"
    allowed = {p.removeprefix("!") for p in patterns if p.startswith("!")}
    assert allowed == BUILD_CONTEXT
    copied = {
        source
        for i in dockerfile()
        if i.keyword == "COPY" and "--from" not in i.arguments
        for source in i.arguments.split()[:-1]
    }
    assert {c.rstrip("/") for c in copied} == {b.rstrip("/") for b in BUILD_CONTEXT}


def test_the_image_does_not_ship_the_emulator() -> None:
    # The emulator has an unauthenticated control API: it must never reach production.
    for path in ("emulator", "emulator/pyproject.toml", "emulator/whatsapp_emulator/emulator.py"):
        assert (ROOT / path).exists(), f"{path}: the emulator moved; update this test"
        assert not in_build_context(path), f".dockerignore lets {path} into the build context"
    for instruction in dockerfile():
        if instruction.keyword in ("COPY", "ADD", "RUN"):
            assert "emulator" not in instruction.arguments, (
                f"{instruction.keyword} {instruction.arguments}"
            )
    # The wheel the image installs holds only the gateway's packages, and needs no emulator.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = project["tool"]["setuptools"]["packages"]
    assert not [p for p in packages if "emulator" in p], packages
    assert "emulator" not in json.dumps(project["tool"]["setuptools"].get("package-dir", {}))
    assert not [d for d in project["project"]["dependencies"] if "emulator" in d]
    emulator = tomllib.loads((ROOT / "emulator" / "pyproject.toml").read_text(encoding="utf-8"))
    assert emulator["project"]["name"] != project["project"]["name"]


# ---- Kubernetes ---------------------------------------------------------------------------------


def test_every_manifest_parses_and_lives_in_the_gateway_namespace() -> None:
    namespace = the("Namespace")["metadata"]["name"]
    for manifest in load_manifests(KUBERNETES) + load_manifests(ISTIO):
        if manifest.get("kind") in ("Namespace", "Kustomization"):
            continue
        assert manifest.get("apiVersion"), f"{manifest['_file']}: no apiVersion"
        assert manifest["metadata"].get("namespace") == namespace, manifest["_file"]


def test_kustomization_applies_every_manifest_except_the_examples() -> None:
    resources = set(the("Kustomization")["resources"])
    on_disk = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert resources == on_disk - EXAMPLES
    for name in resources:
        kinds = {m.get("kind") for m in load_manifests(KUBERNETES) if m["_file"] == name}
        assert "Secret" not in kinds, f"{name}: applying it would overwrite the real Secret"


def test_grpc_container_port_is_the_default_listen_port() -> None:
    grpc_port = container_port("grpc")
    assert grpc_port == port_of(str(default_of("listen")))
    assert grpc_port == port_of(effective_setting("listen"))


def test_readiness_probe_checks_the_identity_service() -> None:
    probe = gateway_container()["readinessProbe"]["grpc"]
    assert probe["service"] == SERVICE_NAME
    assert probe["port"] == container_port("grpc")


def test_liveness_and_startup_probes_check_the_server_as_a_whole() -> None:
    container = gateway_container()
    for kind in ("livenessProbe", "startupProbe"):
        probe = container[kind]["grpc"]
        assert probe.get("service", "") == "", f"{kind} should check service '' (the server)"
        assert probe["port"] == container_port("grpc")


def test_liveness_probe_does_not_restart_a_draining_pod() -> None:
    # Health is NOT_SERVING for the whole drain; liveness must not give up before it ends.
    probe = gateway_container()["livenessProbe"]
    failing_for = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
    assert failing_for > shutdown_grace()


def test_every_gateway_env_var_is_a_real_setting() -> None:
    names = {n for n in deployment_env() if n.startswith(ENV_PREFIX)}
    assert names, "the Deployment configures nothing"
    unknown = names - SETTING_ENV - SECRET_ENV
    assert not unknown, f"the gateway does not read {sorted(unknown)}"


def test_deployment_settings_pass_the_gateways_own_validation(tmp_path: Path) -> None:
    # The pod's files and environment, with stand-ins for the placeholders: what stops a pod
    # with exit 2 (a bad setting, a sender the file gets wrong, an unreadable CA or key) fails
    # here.
    config = pod_config(tmp_path)  # raises ConfigError on a bad value or senders file
    runtime = prepare(config)  # the start-up checks of files (CA bundles, webhook TLS)
    assert config.senders is not None, "the Deployment should serve senders from a file"
    for sender in config.senders.senders:
        assert sender.url.startswith("https://"), sender.number
        assert not sender.insecure, sender.number
    assert config.webhook_listen is not None
    assert not config.webhook_allow_unauthenticated, "webhooks must be authenticated"
    assert runtime.webhook_tls is not None, "the webhook secret would cross the network in clear"


def test_secrets_come_from_the_secret_and_nothing_secret_is_inlined() -> None:
    env = deployment_env()
    examples = {m["metadata"]["name"]: m for m in all_of("Secret")}
    references = 0
    for name, entry in env.items():
        reference = entry.get("valueFrom", {}).get("secretKeyRef")
        if reference is not None:
            references += 1
            assert reference["name"] in examples, f"{name}: no Secret {reference['name']} shown"
            assert reference["key"] in manifest_data("Secret", reference["name"]), name
            assert not reference.get("optional", False), (
                f"{name}: a missing Secret must stop the pod starting"
            )
        secret_name = re.search(r"PASSWORD|TOKEN|SECRET|API_KEY", name)
        if secret_name and not name.endswith("_FILE"):  # a file path is not the secret
            assert "value" not in entry, f"{name} has an inline value"
    assert references, "no secret reaches the gateway"


def test_example_secrets_hold_only_placeholders() -> None:
    examples = all_of("Secret")
    assert examples
    for example in examples:
        values = {**example.get("stringData", {}), **example.get("data", {})}
        assert values
        for key, value in values.items():
            assert "REPLACE" in str(value).upper(), f"secret.yaml {key}: not a placeholder"


def test_termination_grace_period_outlasts_the_drain() -> None:
    period = pod_spec()["terminationGracePeriodSeconds"]
    assert period > prestop_sleep_seconds() + shutdown_grace()


def test_istio_sidecar_outlives_the_drain_and_the_pod_ends_before_sigkill() -> None:
    annotations = the("Deployment")["spec"]["template"]["metadata"].get("annotations", {})
    proxy_config = yaml.safe_load(annotations.get("proxy.istio.io/config", "")) or {}
    drain = seconds(proxy_config.get("terminationDrainDuration", "5s"))  # Istio's default: 5 s
    assert drain > prestop_sleep_seconds() + shutdown_grace()
    assert drain < pod_spec()["terminationGracePeriodSeconds"]


def test_metrics_container_port_is_the_metrics_listen_port() -> None:
    port = container_port("metrics")
    assert port_of(effective_setting("metrics-listen")) == port
    annotations = the("Deployment")["spec"]["template"]["metadata"].get("annotations", {})
    assert int(annotations.get("prometheus.io/port", port)) == port


def test_pods_together_stay_within_whatsapps_rate_limit() -> None:
    # Every gateway process paces itself, so the limits add up across workers and pods, counting
    # the surge pod that serves alongside the others during a rollout. This is the default for a
    # sender without its own `rate_limit`.
    processes = serving_processes()
    rate = float(effective_setting("upstream-rate-limit"))
    assert rate > 0, "0 turns the gateway's pacing toward WhatsApp off"
    assert processes * rate <= WHATSAPP_REQUESTS_PER_SECOND
    assert processes * int(effective_setting("upstream-burst")) <= WHATSAPP_BURST


def test_every_worker_metrics_port_is_declared() -> None:
    # With --workers N, worker k serves its metrics on the metrics port + k (gateway.workers).
    workers = int(effective_setting("workers"))
    first = port_of(effective_setting("metrics-listen"))
    declared = {int(p["containerPort"]) for p in gateway_container()["ports"]}
    missing = {first + k for k in range(workers)} - declared
    assert not missing, f"{workers} workers serve metrics on undeclared ports {sorted(missing)}"


def test_onprem_ca_files_are_the_mounted_whatsapp_ca() -> None:
    onprem = [t for t in sender_tables() if t["backend"] == ONPREM]
    assert onprem, "the example should show an On-Premises sender"
    for table in onprem:
        assert "ca_file" in table, f"sender {table['number']}: WhatsApp's CA is self-signed"
        source = mounted(str(table["ca_file"]))
        assert (source.kind, source.name) == ("ConfigMap", "whatsapp-ca"), source
        assert source.key in manifest_data("ConfigMap", "whatsapp-ca")


def test_gateway_container_is_non_root_read_only_and_without_capabilities() -> None:
    pod = pod_spec()
    context = gateway_container()["securityContext"]
    assert context.get("runAsNonRoot", pod["securityContext"].get("runAsNonRoot")) is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert not context["capabilities"].get("add")


def test_gateway_container_has_resource_requests_and_limits() -> None:
    resources = gateway_container()["resources"]
    for resource in ("cpu", "memory"):
        assert resources["requests"][resource]
        assert resources["limits"][resource]
    assert quantity(resources["limits"]["memory"]) >= quantity(resources["requests"]["memory"])
    assert quantity(resources["limits"]["cpu"]) >= quantity(resources["requests"]["cpu"])


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (``250m``, ``1``, ``128Mi``) as a number."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi)?", str(value))
    assert match, f"unsupported quantity {value!r}"
    scale = {None: 1.0, "m": 0.001, "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30}[match.group(2)]
    return float(match.group(1)) * scale


def test_deployment_uses_the_declared_service_account() -> None:
    assert pod_spec()["serviceAccountName"] == the("ServiceAccount")["metadata"]["name"]


def test_service_grpc_port_speaks_grpc_and_targets_the_container_port() -> None:
    service = the("Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    grpc_port = ports["grpc"]
    assert grpc_port["appProtocol"] == "grpc"
    assert grpc_port["targetPort"] in ("grpc", container_port("grpc"))
    assert ports["metrics"]["targetPort"] in ("metrics", container_port("metrics"))
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_service_and_policies_select_the_gateway_pods() -> None:
    labels = pod_labels()
    selectors = [the("Service")["spec"]["selector"]]
    selectors += [
        m["spec"]["selector"]["matchLabels"]
        for m in load_manifests(ISTIO)
        if "selector" in m["spec"]
    ]
    selectors += [the("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]]
    selectors += [the("NetworkPolicy")["spec"]["podSelector"]["matchLabels"]]
    for selector in selectors:
        assert selector
        assert selector.items() <= labels.items(), selector


# ---- the senders file ---------------------------------------------------------------------------


def test_senders_file_parses_with_the_gateways_own_parser() -> None:
    senders = parsed_senders()  # raises ConfigError naming the sender and the key
    backends = {sender.backend for sender in senders.senders}
    assert {ONPREM, INFOBIP} <= backends, "the example should show both backends"
    assert senders.default in senders.by_number
    for sender in senders.senders:
        assert sender.url.startswith("https://"), sender.number
        assert not sender.insecure, sender.number


def test_senders_file_is_mounted_read_only_from_an_applied_config_map() -> None:
    source = mounted(senders_path())  # also: read-only, no subPath
    assert source.kind == "ConfigMap"
    applied = the("ConfigMap", name=source.name)["_file"]
    assert applied in the("Kustomization")["resources"], f"{applied} is never applied"
    assert source.key in manifest_data("ConfigMap", source.name)


def test_every_variable_the_senders_file_names_comes_from_a_secret() -> None:
    env = deployment_env()
    variables = senders_variables()
    assert variables, "the example should name its secrets by *_env"
    for name in variables:
        assert name in env, f"the senders file names {name}, which the Deployment does not set"
        assert "secretKeyRef" in env[name].get("valueFrom", {}), f"{name} is not from a Secret"
        assert not name.startswith(ENV_PREFIX), f"{name} could be taken for a gateway setting"


def test_every_file_the_senders_file_names_is_mounted() -> None:
    for where, path in senders_files().items():
        source = mounted(path)  # raises if no read-only volume holds it
        if where.endswith("ca_file"):
            continue  # a CA certificate is public: a ConfigMap will do
        assert source.kind == "Secret", f"{where} = {path}: a secret file must come from a Secret"


def test_every_file_setting_points_into_a_mounted_volume() -> None:
    for candidate in SETTINGS:
        if candidate.kind is not Path:
            continue
        value = configured_setting(candidate.flag)
        if value is not None:
            source = mounted(value)
            assert source.key in manifest_data(source.kind, source.name), candidate.flag


def test_no_flag_mode_setting_is_set_alongside_the_senders_file() -> None:
    assert configured_setting("senders") is not None
    env = deployment_env()
    image_env = dockerfile_env(final_stage(dockerfile()))
    for name in FLAG_MODE_ENV:
        assert name not in env, f"{name}: the gateway refuses it with --senders (exit 2)"
        assert name not in image_env, f"the image sets {name}"
    for flag in FLAG_MODE_FLAGS:
        given = [a for a in container_args() if a.partition("=")[0] == f"--{flag}"]
        assert not given, f"--{flag}: the gateway refuses it with --senders (exit 2)"


@pytest.mark.parametrize("name", sorted(FLAG_MODE_ENV))
def test_the_gateway_refuses_every_flag_mode_setting_alongside_senders(
    name: str, tmp_path: Path
) -> None:
    # The list above is the gateway's: each one stops a pod that has a senders file.
    environ = pod_environ(tmp_path)
    secret_file = tmp_path / "secret"
    secret_file.write_text("a-placeholder", encoding="utf-8")
    values = {
        env_name("upstream-url"): "https://whatsapp.example",
        env_name("upstream-username"): "gateway",
        env_name("upstream-ca-file"): certifi.where(),
        env_name("upstream-insecure"): "true",
    }
    environ[name] = values.get(name, str(secret_file) if name.endswith("_FILE") else "a-secret")
    args = build_parser().parse_args(["serve", *(moved(tmp_path, a) for a in container_args())])
    with pytest.raises(ConfigError, match="--senders and"):
        config_from_args(args, environ)


def test_every_env_var_is_a_setting_or_named_by_the_senders_file() -> None:
    known = SETTING_ENV | senders_variables()
    unknown = set(deployment_env()) - known
    assert not unknown, f"nothing reads {sorted(unknown)}"


def test_each_senders_pods_together_stay_within_its_upstreams_rate_limit(tmp_path: Path) -> None:
    # A sender's `rate_limit` is per process too, so the file gives each its share.
    config = pod_config(tmp_path)
    assert config.senders is not None
    processes = serving_processes()
    limits = {ONPREM: WHATSAPP_REQUESTS_PER_SECOND, INFOBIP: INFOBIP_REQUESTS_PER_SECOND}
    for sender in config.senders.senders:
        rate, burst = pace_of(sender, config)
        assert rate > 0, f"sender {sender.number}: 0 turns pacing off"
        assert processes * rate <= limits[sender.backend], sender.number
        # The burst is not set per sender (IDENTITY_GATEWAY_UPSTREAM_BURST for all), so only
        # WhatsApp's documented burst can be checked.
        if sender.backend == ONPREM:
            assert processes * burst <= WHATSAPP_BURST, sender.number


# ---- webhooks -----------------------------------------------------------------------------------


def test_webhook_container_port_is_the_webhook_listen_port() -> None:
    listen = configured_setting("webhook-listen")
    assert listen is not None, "the Deployment should take On-Premises webhooks"
    assert port_of(listen) == container_port("webhook")


def test_every_onprem_sender_authenticates_its_webhooks() -> None:
    for sender in parsed_senders().senders:
        if sender.backend == ONPREM:
            assert sender.webhook_secret is not None, f"sender {sender.number}: no webhook secret"
    assert configured_setting("webhook-allow-unauthenticated") in (None, "False", "false")


def webhook_service_port() -> Manifest:
    webhook = container_port("webhook")
    ports: list[Manifest] = the("Service")["spec"]["ports"]
    found = [p for p in ports if p["targetPort"] in ("webhook", webhook)]
    assert len(found) == 1, "the WhatsApp client reaches webhooks through the Service"
    return found[0]


def test_webhook_port_bypasses_the_sidecar() -> None:
    # The gateway terminates the webhook's TLS itself, for clients in the mesh or not.
    excluded = pod_annotations().get(EXCLUDE_INBOUND_PORTS, "")
    ports = {int(p) for p in excluded.split(",") if p.strip()}
    assert container_port("webhook") in ports
    assert container_port("grpc") not in ports, "gRPC must stay behind the sidecar (mTLS)"
    tls = configured_setting("webhook-tls-cert") is not None
    assert webhook_service_port()["appProtocol"] == ("https" if tls else "http")


def test_mesh_clients_do_not_wrap_the_webhook_in_istio_mtls() -> None:
    # The webhook port has no sidecar to unwrap Istio mTLS, so callers' sidecars must not add it.
    settings = the("DestinationRule", ISTIO)["spec"]["trafficPolicy"].get("portLevelSettings", [])
    by_port = {entry["port"]["number"]: entry for entry in settings}
    port = webhook_service_port()["port"]
    assert port in by_port, f"the DestinationRule's mTLS would reach port {port}"
    assert by_port[port]["tls"]["mode"] == "DISABLE"
    for route in http_routes():
        assert port not in [m.get("port") for m in route.get("match", [])]


# ---- the NetworkPolicy --------------------------------------------------------------------------


def ingress_rules() -> list[Manifest]:
    rules: list[Manifest] = the("NetworkPolicy")["spec"].get("ingress", [])
    return rules


def policy_port(port: int | str) -> int:
    """A NetworkPolicy port: a number, or the name of one of the gateway's container ports."""
    return int(port) if isinstance(port, int) or port.isdigit() else container_port(port)


def admits(rule: Manifest, port: int) -> bool:
    """Whether an ingress rule admits TCP ``port`` (from its sources)."""
    entries = rule.get("ports") or []
    if not entries:
        return True  # no ports: every port
    for entry in entries:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        if "port" not in entry:
            return True  # every port of the protocol
        low = policy_port(entry["port"])
        if low <= port <= int(entry.get("endPort", low)):
            return True
    return False


def from_anywhere(rule: Manifest) -> bool:
    return not rule.get("from")  # no sources: every source


def test_network_policy_selects_the_gateway_pods_and_leaves_egress_open() -> None:
    spec = the("NetworkPolicy")["spec"]
    selector = spec["podSelector"]["matchLabels"]
    assert selector
    assert selector.items() <= pod_labels().items()
    assert spec["policyTypes"] == ["Ingress"], "egress is not restricted by this kit"


def test_network_policy_leaves_grpc_and_metrics_open() -> None:
    webhook = container_port("webhook")
    open_ports = [
        int(p["containerPort"])
        for p in gateway_container()["ports"]
        if p["containerPort"] != webhook
    ]
    for port in [*open_ports, ISTIO_AGENT_PORT]:
        assert any(admits(r, port) and from_anywhere(r) for r in ingress_rules()), port


def test_network_policy_admits_the_webhook_port_only_from_the_whatsapp_client() -> None:
    webhook = container_port("webhook")
    rules = [rule for rule in ingress_rules() if admits(rule, webhook)]
    assert len(rules) == 1, "one rule, for the WhatsApp client, should admit the webhook port"
    peers = rules[0].get("from") or []
    assert peers, "the webhook port is open to everyone"
    for peer in peers:
        # A pod selector alone would mean the gateway's namespace, a namespace selector alone
        # every pod there: both together name the WhatsApp client's pods in its namespace.
        assert "ipBlock" not in peer, "adapt this test if the client is outside the cluster"
        namespaces = peer.get("namespaceSelector") or {}
        pods = peer.get("podSelector") or {}
        assert namespaces.get("matchLabels") or namespaces.get("matchExpressions"), peer
        assert pods.get("matchLabels") or pods.get("matchExpressions"), peer
        labels = pods.get("matchLabels", {})
        assert not labels.items() <= pod_labels().items(), "it selects the gateway itself"
        assert "whatsapp" in json.dumps(peer), f"{peer} does not look like the WhatsApp client"


# ---- Istio --------------------------------------------------------------------------------------


def service_host() -> str:
    metadata = the("Service")["metadata"]
    return f"{metadata['name']}.{metadata['namespace']}.svc.cluster.local"


def http_routes() -> list[Manifest]:
    routes: list[Manifest] = the("VirtualService", ISTIO)["spec"]["http"]
    assert routes
    return routes


def test_virtual_service_retries_only_unavailable() -> None:
    for route in http_routes():
        retries = route["retries"]
        conditions = [c.strip() for c in str(retries["retryOn"]).split(",")]
        # Never resource-exhausted: that is WhatsApp's rate limit, and retries multiply the load.
        assert conditions == ["unavailable"], conditions
        assert retries["attempts"] >= 1
        assert seconds(retries["perTryTimeout"]) > 0


def test_per_try_timeout_never_cuts_the_gateways_own_retries() -> None:
    # Envoy does not retry an attempt it cut at perTryTimeout (retryOn has no 5xx/reset), so the
    # cut must not fall inside the gateway's own upstream attempts.
    attempts = 1 + int(effective_setting("upstream-retries"))
    gateway_work = attempts * float(effective_setting("upstream-timeout"))
    for route in http_routes():
        assert seconds(route["retries"]["perTryTimeout"]) > gateway_work


def test_mesh_rules_target_the_service_grpc_port() -> None:
    host = service_host()
    assert the("DestinationRule", ISTIO)["spec"]["host"] == host
    virtual_service = the("VirtualService", ISTIO)["spec"]
    assert virtual_service["hosts"] == [host]
    grpc_port = next(p["port"] for p in the("Service")["spec"]["ports"] if p["name"] == "grpc")
    for route in http_routes():
        assert [m.get("port") for m in route["match"]] == [grpc_port]
        for destination in route["route"]:
            assert destination["destination"]["host"] == host
            assert destination["destination"]["port"]["number"] == grpc_port


def test_destination_rule_uses_istio_mtls_an_http2_pool_and_outlier_detection() -> None:
    policy = the("DestinationRule", ISTIO)["spec"]["trafficPolicy"]
    assert policy["tls"]["mode"] == "ISTIO_MUTUAL"
    assert policy["connectionPool"]["http"]["http2MaxRequests"] > 0
    assert policy["outlierDetection"]


def test_outlier_detection_ejects_a_replica_only_for_its_own_failures() -> None:
    # A WhatsApp outage makes every replica answer UNAVAILABLE/INTERNAL (counted as 5xx);
    # ejecting replicas for that would only shrink capacity.
    outlier = the("DestinationRule", ISTIO)["spec"]["trafficPolicy"]["outlierDetection"]
    assert outlier["consecutive5xxErrors"] == 0  # Istio's default is 5, so it must be explicit
    assert outlier.get("consecutiveGatewayErrors", 0) == 0
    assert outlier["splitExternalLocalOriginErrors"] is True
    assert outlier["consecutiveLocalOriginFailures"] > 0


def test_outlier_detection_can_eject_one_replica_but_never_two() -> None:
    # Envoy ejects a host only if 100 * (ejected + 1) / hosts <= maxEjectionPercent.
    outlier = the("DestinationRule", ISTIO)["spec"]["trafficPolicy"]["outlierDetection"]
    limit = outlier.get("maxEjectionPercent", 10)  # Istio's default
    replicas = the("Deployment")["spec"]["replicas"]
    assert 100 * 1 / replicas <= limit, "no replica can ever be ejected"
    assert 100 * 2 / replicas > limit, "two replicas could be ejected at once"


def authorization_rules() -> list[Manifest]:
    policy = the("AuthorizationPolicy", ISTIO)["spec"]
    assert policy.get("action", "ALLOW") == "ALLOW"
    rules: list[Manifest] = policy["rules"]
    return rules


def rule_paths(rule: Manifest) -> list[str]:
    """The paths a rule allows; ``["*"]`` when it does not restrict paths."""
    operations = [t["operation"] for t in rule.get("to", [])]
    if not operations or any("paths" not in o for o in operations):
        return ["*"]
    return [path for o in operations for path in o["paths"]]


def path_matches(pattern: str, path: str) -> bool:
    """Istio's string match for paths: exact, ``prefix*``, ``*suffix`` or ``*``."""
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return path.endswith(pattern[1:])
    return path == pattern


def test_authorization_paths_name_real_methods() -> None:
    services = (IDENTITY_SERVICE, HEALTH_SERVICE)
    methods = {f"/{s.full_name}/{m.name}" for s in services for m in s.methods}
    whole_services = {f"/{s.full_name}/*" for s in services}
    for rule in authorization_rules():
        for pattern in rule_paths(rule):
            # A path is one real method, or `/<service>/*` for every method of one service.
            assert pattern in methods | whole_services, f"{pattern} names no known method"


def sources(rule: Manifest) -> list[Manifest]:
    return [entry["source"] for entry in rule.get("from", [])]


def test_acknowledge_is_allowed_only_to_named_principals() -> None:
    allowed = [
        rule
        for rule in authorization_rules()
        if any(path_matches(p, ACKNOWLEDGE_PATH) for p in rule_paths(rule))
    ]
    assert allowed, "nobody may acknowledge"
    for rule in allowed:
        assert sources(rule), f"AcknowledgeIdentity is allowed from anywhere: {rule}"
        for source in sources(rule):
            assert set(source) == {"principals"}, f"only principals may acknowledge: {source}"
            for principal in source["principals"]:
                assert "*" not in principal, f"{principal} is not one named service account"
                assert re.fullmatch(r"[^/]+/ns/[^/]+/sa/[^/]+", principal), principal


def test_get_identity_is_allowed_to_caller_namespaces() -> None:
    namespaces = [
        namespace
        for rule in authorization_rules()
        if any(path_matches(p, GET_PATH) for p in rule_paths(rule))
        for source in sources(rule)
        for namespace in source.get("namespaces", [])
    ]
    assert namespaces
    assert "*" not in namespaces


def test_health_checks_are_allowed() -> None:
    check = f"/{HEALTH_SERVICE.full_name}/Check"
    assert any(
        any(path_matches(p, check) for p in rule_paths(rule)) for rule in authorization_rules()
    )


def test_gateway_pods_accept_only_mtls() -> None:
    assert the("PeerAuthentication", ISTIO)["spec"]["mtls"]["mode"] == "STRICT"


@pytest.mark.parametrize("directory", [KUBERNETES, ISTIO], ids=["kubernetes", "istio"])
def test_every_manifest_is_a_yaml_mapping_with_a_kind(directory: Path) -> None:
    kinds = [m.get("kind") for m in load_manifests(directory)]
    assert kinds
    assert all(kinds)
