"""The gRPC port (SEG_GRPC_PORT) in every deployment file: the image exposes and sets it, compose
publishes it, the pods declare it and the Service routes it, and a KServe predictor takes it."""

import re
from typing import Any

import kubernetes_validate
import yaml

from app.config import Settings
from tests.deploy.test_manifests import KUBERNETES_VERSIONS, MANIFESTS, ROOT, documents


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_image_sets_and_exposes_the_grpc_port() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    (port,) = re.findall(r"SEG_GRPC_PORT=(\d+)", dockerfile)
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    (exposed,) = re.findall(r"^EXPOSE (.+)$", final_stage, re.M)
    assert port in exposed.split()
    assert Settings(grpc_port=port).grpc_port == int(port)


def test_compose_publishes_the_grpc_port() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        port = service["environment"]["SEG_GRPC_PORT"]
        assert f"{port}:{port}" in service["ports"], name


def test_pods_declare_the_grpc_port_and_the_service_routes_it() -> None:
    deployments = [d for p in MANIFESTS for d in documents(p) if d["kind"] == "Deployment"]
    assert len(deployments) == 2  # CPU and GPU
    for deployment in deployments:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert str(ports["grpc"]) == env_of(container)["SEG_GRPC_PORT"]
    (service,) = [d for p in MANIFESTS for d in documents(p) if d["kind"] == "Service"]
    (grpc_port,) = [p for p in service["spec"]["ports"] if p["targetPort"] == "grpc"]
    assert grpc_port["appProtocol"] == "kubernetes.io/h2c"


def test_kserve_grpc_predictor_takes_grpc_on_its_one_port() -> None:
    (service,) = documents(ROOT / "deploy" / "kserve" / "inferenceservice-grpc.yaml")
    assert service["kind"] == "InferenceService"
    (container,) = service["spec"]["predictor"]["containers"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [container]}}  # fmt: skip
    kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[-1], strict=True)
    (port,) = container["ports"]
    env = env_of(container)
    assert port["name"] == "h2c"  # KServe's (Knative's) mark of a gRPC port
    assert str(port["containerPort"]) == env["SEG_GRPC_PORT"]
    Settings(**{k.removeprefix("SEG_").lower(): v for k, v in env.items()})
    probes = [container[k]["httpGet"] for k in ("readinessProbe", "livenessProbe")]
    assert {str(p["port"]) for p in probes} == {env["SEG_PORT"]}  # probes ask HTTP


def test_the_shipped_proto_names_the_v2_service() -> None:
    """What every v2 client calls: package `inference`, service GRPCInferenceService."""
    proto = (ROOT / "app" / "grpc_v2" / "grpc_predict_v2.proto").read_text()
    assert re.search(r"^package inference;$", proto, re.M)
    rpcs = set(re.findall(r"rpc (\w+)\(", proto))
    assert rpcs == {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
                    "ModelInfer"}  # fmt: skip
