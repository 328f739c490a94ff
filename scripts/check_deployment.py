"""Check a deployed segserve (a container, a pod) against the in-process service.

    python scripts/check_deployment.py --url http://127.0.0.1:8000

Sends the same real images from ../shared/datasets to the deployment and to the app
built in this process from the same model folder, and fails unless health, the model list
and the class maps agree. Used by scripts/docker_ci.sh after `docker compose up --wait`.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from app.config import SHIPPED_MODEL_DIR, Settings
from app.main import create_app

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets"
# Real images per shipped model: two ISBI slices, two CamVid val frames.
SAMPLES = {
    "unet-isbi": ["isbi2012/images/5.png", "isbi2012/images/21.png"],
    "dilated-camvid": ["camvid/val/0016E5_07959.png", "camvid/val/0016E5_08041.png"],
}
MIN_AGREEMENT = 0.999  # the image pins onnxruntime (CPU) by lock; the venv may differ in version


def class_map(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def check(url: str, data_root: Path, model_dir: Path) -> list[str]:
    failures: list[str] = []
    remote = httpx.Client(base_url=url, timeout=120)
    settings = Settings(model_dir=model_dir, device="cpu")
    with TestClient(create_app(settings)) as local:
        deadline = time.monotonic() + 180
        while local.get("/health/ready").status_code != 200:  # load and warm up in-process
            if time.monotonic() > deadline:
                return ["the in-process service never became ready"]
            time.sleep(0.2)
        for path in ("/health/live", "/health/ready"):
            status = remote.get(path).status_code
            print(f"GET {path}: {status}")
            if status != 200:
                failures.append(f"{path} answered {status}")
        ready = remote.get("/health/ready").json()
        for model in ready.get("models", []):
            print(f"  {model['name']}: {model['state']} on {model.get('providers')}")
        names = sorted(m["spec"]["name"] for m in remote.get("/v1/models").json()["models"])
        local_names = sorted(m["spec"]["name"] for m in local.get("/v1/models").json()["models"])
        print(f"models: {names}")
        if names != local_names:
            failures.append(f"models {names} != in-process {local_names}")
        for name, images in SAMPLES.items():
            for relative in images:
                data = (data_root / relative).read_bytes()
                headers = {"content-type": "image/png"}
                answer = remote.post(f"/v1/models/{name}/segment", content=data, headers=headers)
                expected = local.post(f"/v1/models/{name}/segment", content=data, headers=headers)
                if answer.status_code != 200 or answer.headers["content-type"] != "image/png":
                    failures.append(f"{name} {relative}: {answer.status_code} {answer.text[:200]}")
                    continue
                got, want = class_map(answer.content), class_map(expected.content)
                agreement = float((got == want).mean()) if got.shape == want.shape else 0.0
                print(f"{name} {relative}: {got.shape}, agreement with in-process {agreement:.6f}")
                if agreement < MIN_AGREEMENT:
                    failures.append(f"{name} {relative}: agreement {agreement:.6f}")
        png = {"content-type": "image/png"}
        bad = remote.post("/v1/models/unet-isbi/segment", content=b"not an image", headers=png)
        print(f"garbage body: {bad.status_code} {bad.headers.get('content-type')}")
        if not 400 <= bad.status_code < 500:
            failures.append(f"garbage body answered {bad.status_code}")
        if bad.headers.get("content-type") != "application/problem+json":
            failures.append("garbage body: no problem+json")
        if remote.get("/health/live").status_code != 200:
            failures.append("not live after bad input")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model-dir", type=Path, default=SHIPPED_MODEL_DIR)
    args = parser.parse_args()
    failures = check(args.url, args.data_root, args.model_dir)
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    print("deployment check: " + ("FAILED" if failures else "passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
