"""``infra/k8s``: every manifest valid for a pinned Kubernetes (kubernetes-validate; the
KEDA kinds against the schema of the fields used here), and what users rely on: a
worker Deployment and a ScaledObject per tier of the fleet file, scaling on the Redis
lists its queues really use; the workers run what docker-compose.yml runs, with
arguments ``llmfleet worker`` accepts; one beat; env names the fleet reads."""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]
from kombu.transport.redis import Channel

from schemas import FleetConfig, Settings
from schemas.config import parse_fleet_config
from schemas.keys import WORKERS
from tasks.celery_config import celery_settings, fleet_queues
from tasks.names import TASK_OPTIONS

ROOT = Path(__file__).parents[2]
K8S = ROOT / "infra" / "k8s"
#: The Kubernetes whose API schemas the manifests are checked against.
KUBERNETES = "1.30.0"
#: A template, kept out of the kustomization so that an apply never overwrites the Secret.
TEMPLATES = {"secret.example.yaml"}
PROBE = "/etc/llmfleet/worker_alive.py"

Manifest = dict[str, Any]


@functools.cache
def load(name: str) -> tuple[Manifest, ...]:
    """A file's manifests, parsed once: tests copy one before changing it."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(doc for doc in yaml.load_all((K8S / name).read_text(), loader) if doc)


def manifests() -> list[Manifest]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in load(path.name)]


def named(kind: str, name: str) -> Manifest:
    found = [m for m in manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@functools.cache
def fleet() -> FleetConfig:
    return parse_fleet_config(tomllib.loads(configmap_file("fleet.toml")), "configmap.yaml")


def configmap_file(key: str) -> str:
    return str(named("ConfigMap", "llmfleet-fleet")["data"][key])


def container(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def compose_service(name: str) -> Manifest:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][name])


#: The KEDA fields these manifests use; anything else is refused, so a typo fails here
#: rather than in the cluster.
_STRING = {"type": "string"}
_KEDA: dict[str, dict[str, Any]] = {
    "TriggerAuthentication": {
        "type": "object", "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": _STRING, "metadata": {},
            "spec": {"type": "object", "additionalProperties": False,
                     "required": ["secretTargetRef"],
                     "properties": {"secretTargetRef": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "additionalProperties": False,
                         "required": ["parameter", "name", "key"],
                         "properties": {"parameter": _STRING, "name": _STRING,
                                        "key": _STRING}}}}}}},
    "ScaledObject": {
        "type": "object", "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": _STRING, "metadata": {},
            "spec": {
                "type": "object", "additionalProperties": False,
                "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    "scaleTargetRef": {"type": "object", "additionalProperties": False,
                                       "required": ["name"], "properties": {"name": _STRING}},
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "advanced": {
                        "type": "object", "additionalProperties": False, "properties": {
                            "scalingModifiers": {
                                "type": "object", "additionalProperties": False,
                                "required": ["formula", "target"],
                                "properties": {"formula": _STRING,
                                               "target": {"type": "string",
                                                          "pattern": r"^[0-9]+$"},
                                               "metricType": {"enum": ["AverageValue",
                                                                       "Value"]}}},
                            # The HPA's own behavior type, checked by kubernetes-validate.
                            "horizontalPodAutoscalerConfig": {
                                "type": "object", "additionalProperties": False,
                                "properties": {"behavior": {"type": "object"}}}}},
                    "triggers": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False,
                        "required": ["type", "name", "metadata", "authenticationRef"],
                        "properties": {
                            "type": {"const": "redis"}, "name": _STRING,
                            "authenticationRef": {
                                "type": "object", "additionalProperties": False,
                                "required": ["name"], "properties": {"name": _STRING}},
                            "metadata": {
                                "type": "object", "additionalProperties": False,
                                "required": ["listName", "listLength"],
                                "properties": {
                                    "listName": _STRING,
                                    # KEDA reads trigger metadata as strings only.
                                    "listLength": {"type": "string", "pattern": r"^[0-9]+$"},
                                    "databaseIndex": {"type": "string",
                                                      "pattern": r"^[0-9]+$"}}}}}}}}}},
}


def validate(manifest: Manifest) -> None:
    kind = manifest["kind"]
    if kind in _KEDA:
        jsonschema.validate(manifest, _KEDA[kind])
        behavior = manifest["spec"].get("advanced", {}).get(
            "horizontalPodAutoscalerConfig", {}).get("behavior")
        if behavior is not None:
            kubernetes_validate.validate(hpa_with(behavior), KUBERNETES, strict=True)
        return
    kubernetes_validate.validate(manifest, KUBERNETES, strict=True)


def hpa_with(behavior: Manifest) -> Manifest:
    """An HPA around a ScaledObject's behavior: KEDA passes it to the HPA it makes."""
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "probe"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": "probe"},
                     "maxReplicas": 1, "behavior": behavior}}


def test_every_manifest_is_valid_for_the_pinned_kubernetes() -> None:
    found = manifests()
    assert {m["kind"] for m in found} >= {
        "Namespace", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
        "Job", "ScaledObject", "TriggerAuthentication"}
    for manifest in found:
        try:
            validate(manifest)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']}: {where}: "
                        f"{exc.message}")
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == "llmfleet", manifest["metadata"]


def test_the_validation_refuses_a_bad_manifest() -> None:
    deployment = named("Deployment", "worker-simple")
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)
    scaled = json.loads(json.dumps(named("ScaledObject", "worker-simple")))
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 64
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)


def test_the_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == present - TEMPLATES
    assert not any(m["kind"] == "Secret" for name in listed for m in load(name))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_every_listed_resource() -> None:
    done = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = {(m["kind"], m["metadata"]["name"]) for m in yaml.safe_load_all(done.stdout)}
    assert rendered == {(m["kind"], m["metadata"]["name"]) for m in manifests()
                        if m["kind"] != "Secret"}


def test_the_fleet_file_is_the_default_one() -> None:
    default = (ROOT / "schemas" / "default_fleet.toml").read_text("utf-8")
    assert configmap_file("fleet.toml") == default, (
        "configmap.yaml's fleet.toml differs from schemas/default_fleet.toml: copy it again")


def worker_command() -> click.Command:
    """``llmfleet worker``, from its module's file alone: importing ``workers.cli`` builds
    every command family (scipy, SQLAlchemy: seconds); this module needs click and
    schemas at import."""
    spec = importlib.util.spec_from_file_location("_k8s_cli_fleet",
                                                  ROOT / "workers" / "cli" / "fleet.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    commands: list[click.Command] = module.FLEET_COMMANDS
    return next(c for c in commands if c.name == "worker")


def test_every_tier_has_a_worker_running_the_compose_command() -> None:
    worker = worker_command()
    for tier in fleet().tiers:
        deployment = named("Deployment", f"worker-{tier}")
        spec, main = deployment["spec"], container(deployment)
        assert main["args"] == compose_service(f"worker-{tier}")["command"]
        assert main["image"] == compose_service(f"worker-{tier}")["image"]
        assert "command" not in main  # the image's entrypoint is `llmfleet`
        assert main["args"][0] == "worker"
        parsed = worker.make_context("worker", list(main["args"][1:])).params
        assert parsed["tiers"] == tier
        # The autoscaler owns the count: `kubectl apply` must not reset it.
        assert "replicas" not in spec
        labels = spec["selector"]["matchLabels"]
        assert spec["template"]["metadata"]["labels"] == labels
        pdb = named("PodDisruptionBudget", f"worker-{tier}")
        assert pdb["spec"]["selector"]["matchLabels"] == labels


def test_workers_outlast_their_longest_job_and_probe_their_heartbeat() -> None:
    limit = fleet().job_time_limit_s
    for tier in fleet().tiers:
        deployment = named("Deployment", f"worker-{tier}")
        pod, main = deployment["spec"]["template"]["spec"], container(deployment)
        assert pod["terminationGracePeriodSeconds"] >= limit + 30
        for probe in ("startupProbe", "livenessProbe"):
            assert main[probe]["exec"]["command"] == ["python", PROBE]
        mount = next(m for m in main["volumeMounts"] if PROBE.startswith(m["mountPath"]))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == "llmfleet-fleet"
        assert main["resources"]["requests"] and main["resources"]["limits"]


class _Down(Exception):
    """The fake's redis.RedisError."""


class _FakeRedis:
    """What the probe asks of redis-py (``redis.Redis``), answering from heartbeats;
    ``None``: Redis is down."""

    def __init__(self, beats: dict[str, float] | None) -> None:
        self.beats = beats

    def from_url(self, url: str, **_: Any) -> _FakeRedis:
        assert url == "redis://probe"
        return self

    def hscan_iter(self, key: str, match: str) -> list[tuple[str, str]]:
        assert key == WORKERS
        if self.beats is None:
            raise _Down("down")
        prefix = match.removesuffix("*")
        return [(name, json.dumps({"at": at, "tags": []}))
                for name, at in self.beats.items() if name.startswith(prefix)]


def run_probe(beats: dict[str, float] | None, monkeypatch: pytest.MonkeyPatch) -> int:
    fake = _FakeRedis(beats)
    module = types.ModuleType("redis")
    module.__dict__.update(Redis=fake, RedisError=_Down)
    monkeypatch.setitem(sys.modules, "redis", module)
    monkeypatch.setenv("REDIS_URL", "redis://probe")
    monkeypatch.setattr(socket, "gethostname", lambda: "worker-simple-abc")
    with pytest.raises(SystemExit) as exited:
        exec(compile(configmap_file("worker_alive.py"), PROBE, "exec"), {})
    return int(exited.value.code or 0)


def test_the_liveness_probe_fails_only_on_a_stale_heartbeat_of_its_own_pod(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    mine, other = "worker-simple-abc:1:aa", "worker-simple-xyz:1:bb"
    assert run_probe({mine: now - 5}, monkeypatch) == 0
    assert run_probe({"worker-simple-abc:1:old": now - 900, mine: now - 5}, monkeypatch) == 0
    assert run_probe({mine: now - 900, other: now}, monkeypatch) == 1
    assert run_probe({other: now}, monkeypatch) == 1
    assert run_probe(None, monkeypatch) == 0  # Redis down: a restart would not help
    # Several beats must pass before a slow one counts as stale.
    source = configmap_file("worker_alive.py")
    max_age = float(source.split("MAX_AGE_S = ", 1)[1].split()[0])
    assert max_age >= 3 * fleet().sweep_every_s


def test_the_probe_matches_the_name_workers_beat_under() -> None:
    import redis.asyncio

    from workers.recovery.sweeper import Sweeper

    name = Sweeper(redis.asyncio.Redis()).name  # "<hostname>:<pid>:<token>"
    assert name.startswith(f"{socket.gethostname()}:")
    assert 'match=f"{host}:*"' in configmap_file("worker_alive.py")


def redis_lists(queue: str) -> set[str]:
    """The Redis lists kombu fills for ``queue`` with the messages the fleet sends: at the
    priority of a message that carries none (the fleet sets none, below)."""
    channel = Channel.__new__(Channel)  # its naming reads class attributes only
    unset: dict[str, dict[str, int]] = {"properties": {}}
    priority = channel._get_message_priority(unset)  # type: ignore[no-untyped-call]
    return {channel._q_for_pri(queue, priority)}  # type: ignore[no-untyped-call]


def test_each_tier_scales_on_the_lists_its_queues_fill() -> None:
    settings = celery_settings("redis://x", "redis://x", fleet())
    assert "task_default_priority" not in settings
    assert "priority_steps" not in settings["broker_transport_options"]
    assert not any("priority" in options for options in TASK_OPTIONS.values())
    for tier in fleet().tiers:
        scaled = named("ScaledObject", f"worker-{tier}")["spec"]
        assert scaled["scaleTargetRef"]["name"] == f"worker-{tier}"
        assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (1, 10)
        triggers = scaled["triggers"]
        expected = set().union(*(redis_lists(q) for q in fleet_queues(fleet(), [tier])))
        assert {t["metadata"]["listName"] for t in triggers} == expected
        # The formula adds every trigger once: the backlog as a whole.
        formula = scaled["advanced"]["scalingModifiers"]["formula"]
        assert sorted(term.strip() for term in formula.split("+")) == \
            sorted(t["name"] for t in triggers)
        concurrency = int(container(named("Deployment", f"worker-{tier}"))["args"][4])
        assert int(scaled["advanced"]["scalingModifiers"]["target"]) == concurrency


def test_keda_reads_the_redis_the_fleet_uses() -> None:
    secret = named("Secret", "llmfleet")["stringData"]
    auth = named("TriggerAuthentication", "llmfleet-redis")["spec"]["secretTargetRef"]
    assert {(a["parameter"], a["name"]) for a in auth} == {("address", "llmfleet"),
                                                          ("password", "llmfleet")}
    assert {a["key"] for a in auth} <= set(secret)
    database = secret["REDIS_URL"].rsplit("/", 1)[1]
    for tier in fleet().tiers:
        for trigger in named("ScaledObject", f"worker-{tier}")["spec"]["triggers"]:
            assert trigger["authenticationRef"]["name"] == "llmfleet-redis"
            assert trigger["metadata"]["databaseIndex"] == database


def test_one_beat_active_and_one_standing_by() -> None:
    # (two beats tick once between them: RedBeat's lock, tests/drills/test_beat_standby.py)
    beat = named("Deployment", "beat")
    assert beat["spec"]["replicas"] == 2
    assert container(beat)["args"] == compose_service("beat")["command"]
    assert not any(m["kind"] == "ScaledObject" and m["spec"]["scaleTargetRef"]["name"] ==
                   "beat" for m in manifests())


def public_routes() -> tuple[str, set[str]]:
    """(PREFIX, paths of ``public_router``'s GET routes) of workers/api/admin_routes.py,
    read from its syntax tree: importing ``workers.api`` takes seconds."""
    tree = ast.parse((ROOT / "workers" / "api" / "admin_routes.py").read_text())
    prefix = next(node.value.value for node in tree.body if isinstance(node, ast.Assign)
                  and [ast.unparse(t) for t in node.targets] == ["PREFIX"]
                  and isinstance(node.value, ast.Constant))
    paths = {call.args[0].value
             for node in tree.body if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef)
             for call in node.decorator_list if isinstance(call, ast.Call)
             and ast.unparse(call.func) == "public_router.get"
             and isinstance(call.args[0], ast.Constant)}
    return str(prefix), {str(p) for p in paths}


def test_the_api_serves_the_compose_port_and_is_ready_on_its_health_route() -> None:
    prefix, public = public_routes()
    api = container(named("Deployment", "api"))
    args = api["args"]
    assert args == compose_service("api")["command"]
    port = int(args[args.index("--port") + 1])
    assert api["ports"] == [{"name": "http", "containerPort": port}]
    health = api["readinessProbe"]["httpGet"]["path"]
    assert health == f"{prefix}/health"
    assert "/health" in public
    service = named("Service", "api")["spec"]["ports"]
    assert service == [{"name": "http", "port": port, "targetPort": "http"}]


def env_names() -> dict[str, set[str]]:
    """Each pod's container env names, ConfigMap keys included: pod -> names."""
    env_keys = set(named("ConfigMap", "llmfleet-env")["data"])
    out: dict[str, set[str]] = {}
    for m in manifests():
        if m["kind"] in ("Deployment", "Job"):
            main = container(m)
            names = {e["name"] for e in main.get("env", [])}
            for source in main.get("envFrom", []):
                assert source["configMapRef"]["name"] == "llmfleet-env"
                names |= env_keys
            out[m["metadata"]["name"]] = names
    return out


class _Recorder(Mapping[str, str]):
    """An empty environment that records the names read from it."""

    def __init__(self) -> None:
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_env_names_are_ones_the_fleet_reads() -> None:
    env = _Recorder()
    Settings.from_env(env)
    keys = {p.api_key_env for p in fleet().providers.values()}
    api_source = (ROOT / "workers" / "api" / "app.py").read_text()
    api_only = {n for n in ("LLMFLEET_ADMIN_KEY", "LLMFLEET_METRICS_TOKEN")
                if f'"{n}"' in api_source}
    per_pod = env_names()
    for pod, names in per_pod.items():
        extra = api_only if pod == "api" else {"FLOWER_BASIC_AUTH"} if pod == "flower" \
            else set()
        assert names <= env.read | keys | extra, (pod, names - env.read - keys - extra)
        assert {"REDIS_URL", "LLMFLEET_CONFIG"} <= names, pod
    for tier in fleet().tiers:
        assert {"DATABASE_URL", *keys} <= per_pod[f"worker-{tier}"]
    # Every name the pods take from the Secret is in its template.
    secret = set(named("Secret", "llmfleet")["stringData"])
    for m in manifests():
        if m["kind"] in ("Deployment", "Job"):
            for entry in container(m).get("env", []):
                ref = entry["valueFrom"]["secretKeyRef"]
                assert (ref["name"], ref["key"]) in {("llmfleet", k) for k in secret}
