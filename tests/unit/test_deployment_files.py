"""The deployment files in docker/ (Dockerfile, entry point, compose, Kubernetes manifests)
checked against the code, since no container engine runs here: every command, module, flag,
port, environment variable, volume and probe they use must exist and agree."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
import yaml

from agentgate.common.config import DEFAULT_ADDRESSES, SERVICES, address_env_var
from agentgate.common.database import DATABASE_URL_ENV

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
IMAGE_PREFIX = "agentgate:"
PORTS = {name: int(address.rsplit(":", 1)[1]) for name, address in DEFAULT_ADDRESSES.items()}


# -- what the files say ----------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of each Dockerfile line, continuations joined."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def entrypoint_routes() -> dict[str, str]:
    """First argument -> what entrypoint.sh runs for it (`python -m MODULE` or a command)."""
    routes: dict[str, str] = {}
    for names, target in re.findall(r"^\s*([\w|]+)\)\s*exec (.+?)\s*;;", (DOCKER / "entrypoint.sh").read_text(), re.M):
        for name in names.split("|"):
            routes[name] = target.replace('"agentgate.$what"', f"agentgate.{name}").replace('"$@"', "").strip()
    return routes


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def k8s_objects() -> list[dict]:
    objects = []
    for path in sorted((DOCKER / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return objects


def agentgate_containers() -> list[tuple[str, dict]]:
    """(where, container) of every Kubernetes container that runs our image."""
    found = []
    for obj in k8s_objects():
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            if container["image"].startswith(IMAGE_PREFIX):
                found.append((f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}", container))
    return found


def compose_services() -> dict[str, dict]:
    return {name: svc for name, svc in compose()["services"].items() if svc.get("image", "").startswith(IMAGE_PREFIX)}


@cache
def module_flags(module: str) -> frozenset[str]:
    """The --flags `python -m MODULE --help` lists."""
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"python -m {module} --help failed:\n{result.stderr}"
    return frozenset(re.findall(r"(--[a-z][a-z0-9-]*)", result.stdout))


@cache
def code_text() -> str:
    files = [*(ROOT / "services").rglob("*.py"), *(ROOT / "clients" / "python").rglob("*.py")]
    return "\n".join(path.read_text() for path in files)


def env_var_is_read(key: str) -> bool:
    """True when the code reads `key` (literally, or as a service address variable)."""
    return f'"{key}"' in code_text() or key in {address_env_var(name) for name in SERVICES}


def check_invocation(where: str, argv: list[str]) -> tuple[str, dict[str, str]]:
    """Checks `argv` as given to the image's entry point; returns the service it runs and its flags."""
    routes = entrypoint_routes()
    assert argv and argv[0] in routes, f"{where}: {argv[:1]} is not an entry point route {sorted(routes)}"
    target = routes[argv[0]]
    assert target.startswith("python -m "), f"{where}: {argv[0]} does not run a module"
    module = target.split()[-1]
    assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
    flags: dict[str, str] = {}
    rest = argv[1:]
    while rest:
        flag, value, rest = rest[0], rest[1] if len(rest) > 1 else "", rest[2:]
        assert flag in module_flags(module), f"{where}: python -m {module} has no flag {flag}"
        flags[flag] = value
    return argv[0], flags


def listen_port(where: str, service: str, flags: dict[str, str]) -> int:
    """The port a service invocation listens on; it must be that service's default port."""
    address = flags.get("--address", DEFAULT_ADDRESSES[service])
    host, _, port = address.rpartition(":")
    assert host in {"0.0.0.0", "127.0.0.1"}, f"{where}: --address {address}"
    assert int(port) == PORTS[service], f"{where}: {service} listens on {port}, its default is {PORTS[service]}"
    return int(port)


# -- the image ---------------------------------------------------------------------------


def test_dockerfile_copies_what_exists_and_exposes_the_service_ports():
    instructions = dockerfile()
    entry = [args for op, args in instructions if op == "ENTRYPOINT"]
    assert len(entry) == 1
    entry_path = yaml.safe_load(entry[0])[0]
    copies = [shlex.split(args) for op, args in instructions if op == "COPY"]
    for *sources, _destination in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert ["docker/entrypoint.sh", entry_path] in copies, "the ENTRYPOINT script is not copied into the image"
    assert (DOCKER / "entrypoint.sh").stat().st_mode & 0o111, "entrypoint.sh is not executable"
    exposed = {int(port) for op, args in instructions if op == "EXPOSE" for port in args.split()}
    assert exposed == set(PORTS.values())
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(args for op, args in instructions if op == "ENV")))
    assert env["AGENTGATE_HOME"] == "/data" and env_var_is_read("AGENTGATE_HOME")
    assert [args for op, args in instructions if op == "VOLUME"] == ['["/data"]']
    # The default command is a service.
    cmd = yaml.safe_load([args for op, args in instructions if op == "CMD"][0])
    assert check_invocation("CMD", cmd)[0] in SERVICES
    # The package the image installs has every module the entry point runs.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for name, target in entrypoint_routes().items():
        if target.startswith("python -m "):
            module = target.split()[-1]
            assert module.rsplit(".", 1)[0] in packages or module in packages, f"{name}: {module} not packaged"
            assert importlib.util.find_spec(module) is not None, module


def test_entry_point_routes_every_service_and_refuses_the_rest():
    routes = entrypoint_routes()
    for service in SERVICES:
        assert routes[service] == f"python -m agentgate.{service}"
    assert routes["healthcheck"] == "python -m agentgate.common.healthcheck"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert routes["agentgate"] in scripts
    refused = subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), "nonsense"], capture_output=True, text=True)
    assert refused.returncode == 2 and "usage" in refused.stderr


# -- compose -------------------------------------------------------------------------------


def test_compose_runs_the_four_services_with_health_checks_a_volume_and_tracing():
    doc = compose()
    services = compose_services()
    assert set(services) == set(SERVICES)
    entry_path = yaml.safe_load([args for op, args in dockerfile() if op == "ENTRYPOINT"][0])[0]
    for name, svc in services.items():
        service, flags = check_invocation(f"compose {name}", svc["command"])
        assert service == name
        port = listen_port(f"compose {name}", name, flags)
        # The health check runs the probe module through the entry point, on this service's port.
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == entry_path
        _, probe_flags = check_invocation(f"compose {name} healthcheck", test[2:])
        assert test[2] == "healthcheck" and probe_flags["--address"] == f"127.0.0.1:{port}"
        # $AGENTGATE_HOME is the named volume.
        home = svc["environment"]["AGENTGATE_HOME"]
        volume, _, mount = svc["volumes"][0].partition(":")
        assert mount == home and volume in doc["volumes"]
        for dependency in svc.get("depends_on", {}):
            assert dependency in services
        for mapping in svc.get("ports", []):
            host_ip, host_port, container_port = mapping.split(":")
            assert host_ip == "127.0.0.1" and int(container_port) == port == int(host_port)
        for key, value in svc["environment"].items():
            assert env_var_is_read(key), f"compose {name}: {key} is read nowhere in the code"
            for target in SERVICES:
                if key == address_env_var(target):
                    host, _, target_port = value.rpartition(":")
                    assert host == target and int(target_port) == PORTS[target], f"{key}={value}"
        # Listening beyond loopback needs the token.
        assert "AGENTGATE_TOKEN" in svc["environment"]
    # Traces go to the Jaeger service over OTLP/gRPC.
    endpoint = services["queue"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    host, port = endpoint.removeprefix("http://").split(":")
    assert host in doc["services"] and port == "4317"
    assert doc["services"][host]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


# -- Kubernetes ------------------------------------------------------------------------------


def test_kubernetes_queue_and_persistence_are_stateful_sets_with_volumes():
    objects = {(obj["kind"], obj["metadata"]["name"]): obj for obj in k8s_objects()}
    config = objects[("ConfigMap", "agentgate-config")]["data"]
    for service in ("queue", "persistence"):
        name = f"agentgate-{service}"
        stateful = objects[("StatefulSet", name)]["spec"]
        assert stateful["replicas"] == 1, "one writer per SQLite file"
        assert ("Service", stateful["serviceName"]) in objects
        claims = {claim["metadata"]["name"] for claim in stateful["volumeClaimTemplates"]}
        (container,) = stateful["template"]["spec"]["containers"]
        mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
        assert any(mounts.get(claim) == config["AGENTGATE_HOME"] for claim in claims), f"{name}: home not on a PVC"
        # Clients reach it through its Service, on its port.
        host, _, port = config[address_env_var(service)].rpartition(":")
        assert host == name and int(port) == PORTS[service]
        service_ports = objects[("Service", name)]["spec"]["ports"]
        assert [(p["port"], p["targetPort"]) for p in service_ports] == [(PORTS[service], PORTS[service])]


def test_kubernetes_worker_pod_runs_orchestrator_and_workspace_side_by_side():
    objects = {(obj["kind"], obj["metadata"]["name"]): obj for obj in k8s_objects()}
    worker = objects[("Deployment", "agentgate-worker")]["spec"]
    containers = {c["name"]: c for c in worker["template"]["spec"]["containers"]}
    assert set(containers) == {"orchestrator", "workspace"}
    config = objects[("ConfigMap", "agentgate-config")]["data"]
    # The orchestrator reaches the workspace service of its own pod.
    assert config[address_env_var("workspace")] == DEFAULT_ADDRESSES["workspace"]
    volumes = {volume["name"] for volume in worker["template"]["spec"]["volumes"]}
    for container in containers.values():
        assert {m["name"] for m in container["volumeMounts"]} <= volumes


def test_kubernetes_containers_use_real_modules_flags_ports_variables_and_grpc_probes():
    objects = {(obj["kind"], obj["metadata"]["name"]) for obj in k8s_objects()}
    kustomized = set(yaml.safe_load((DOCKER / "k8s" / "kustomization.yaml").read_text())["resources"])
    assert kustomized == {path.name for path in (DOCKER / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    containers = agentgate_containers()
    assert sorted(c["name"] for _, c in containers) == sorted(SERVICES)
    for where, container in containers:
        service, flags = check_invocation(where, container["args"])
        assert service == container["name"]
        port = listen_port(where, service, flags)
        assert [p["containerPort"] for p in container["ports"]] == [port]
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, f"{where}: {probe} is not a gRPC probe on {port}"
        if "startupProbe" in container:
            assert container["startupProbe"]["grpc"]["port"] == port
        for source in container.get("envFrom", []):
            assert ("ConfigMap", source["configMapRef"]["name"]) in objects
        for item in container.get("env", []):
            assert env_var_is_read(item["name"]), f"{where}: {item['name']} is read nowhere in the code"
            secret = item.get("valueFrom", {}).get("secretKeyRef")
            if secret:
                # Created by the operator (docs/deployment.md), never committed.
                assert secret["name"] == "agentgate-token" and item["name"] == "AGENTGATE_TOKEN"
        assert any(item["name"] == "AGENTGATE_TOKEN" for item in container["env"]), f"{where}: no token"
    for obj in k8s_objects():
        if obj["kind"] == "ConfigMap":
            for key in obj["data"]:
                assert env_var_is_read(key), f"ConfigMap {key} is read nowhere in the code"


@pytest.mark.parametrize("doc", ["docs/deployment.md", "README.md"])
def test_deployment_is_documented(doc: str):
    text = (ROOT / doc).read_text()
    assert "docker/compose.yaml" in text and "docker/k8s" in text


def test_postgresql_overlays_set_real_variables_and_two_replicas():
    """docker/compose.postgres.yaml and docker/k8s-postgres (docs/deployment.md, "Several
    replicas on PostgreSQL"): every variable is one the code reads, queue and persistence
    run two replicas on AGENTGATE_DATABASE_URL, clients name both."""
    text = (DOCKER / "compose.postgres.yaml").read_text().replace("!reset ", "")
    override = yaml.safe_load(text)
    services = override["services"]
    assert {"postgres", "queue-2", "persistence-2"} <= set(services)
    for name in ("queue", "queue-2", "persistence", "persistence-2"):
        env = services[name]["environment"]
        assert env["AGENTGATE_DATABASE_URL"].startswith("postgresql://")
        for key in env:
            if key.startswith("AGENTGATE_"):
                assert env_var_is_read(key), f"{name}: {key} is read nowhere"
    assert services["queue-2"]["extends"] == {"file": "compose.yaml", "service": "queue"}
    assert len(override["x-pg-env"]["AGENTGATE_QUEUE_ADDR"].split(",")) == 2
    overlay = DOCKER / "k8s-postgres"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (overlay / resource).exists(), resource
    patched = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all((overlay / "stateful-replicas.yaml").read_text())}
    for name in ("agentgate-queue", "agentgate-persistence"):
        spec = patched[name]["spec"]
        assert spec["replicas"] == 2
        env = spec["template"]["spec"]["containers"][0]["env"]
        assert [e["name"] for e in env] == [DATABASE_URL_ENV]
