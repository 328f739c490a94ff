"""Check a deployed segserve's gRPC port (the Open Inference Protocol) against its own /v1.

    python scripts/check_grpc.py --grpc 127.0.0.1:8081 --url http://127.0.0.1:8000

With tritonclient.grpc (the dev extra): the server and every model ready, and for each model
one real image from ../shared/datasets segmented over gRPC (UINT8 pixels and the encoded
file as BYTES) must give exactly the class map /v1 gives. Used by scripts/docker_ci.sh.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as triton
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SAMPLES = {"unet-isbi": "isbi2012/images/20.png", "dilated-camvid": "camvid/val/0016E5_07959.png"}


def check(grpc_address: str, url: str, data: Path) -> list[str]:
    failures: list[str] = []
    client = triton.InferenceServerClient(grpc_address)
    if not (client.is_server_live() and client.is_server_ready()):
        return [f"gRPC {grpc_address}: server not live and ready"]
    models = [m["spec"]["name"] for m in httpx.get(f"{url}/v1/models").json()["models"]]
    for model in models:
        if not client.is_model_ready(model):
            failures.append(f"{model}: not ready over gRPC")
            continue
        sample = SAMPLES.get(model)
        if sample is None or not (data / sample).is_file():
            print(f"{model}: ready (no sample image to compare)")
            continue
        encoded = (data / sample).read_bytes()
        answer = httpx.post(f"{url}/v1/models/{model}/segment", content=encoded, timeout=120,
                            headers={"content-type": "application/octet-stream"})  # fmt: skip
        expected = np.asarray(Image.open(io.BytesIO(answer.content)))
        channels = client.get_model_metadata(model, as_json=True)["inputs"][0]["shape"][3]
        pixels = np.asarray(
            Image.open(io.BytesIO(encoded)).convert("L" if channels == "1" else "RGB")
        )
        pixels = pixels.reshape(1, *pixels.shape[:2], -1)
        raw = triton.InferInput("image", list(pixels.shape), "UINT8")
        raw.set_data_from_numpy(pixels)
        coded = triton.InferInput("image_bytes", [1], "BYTES")
        coded.set_data_from_numpy(np.array([encoded], dtype=np.object_))
        for name, tensor in (("UINT8 pixels", raw), ("BYTES file", coded)):
            labels = client.infer(model, [tensor], client_timeout=120).as_numpy("labels")[0]
            same = labels.shape == expected.shape and bool(np.array_equal(labels, expected))
            print(f"{model} {sample} as {name}: {'same class map as /v1' if same else 'DIFFERS'}")
            if not same:
                failures.append(f"{model}: gRPC ({name}) and /v1 class maps differ")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc", default="127.0.0.1:8081", help="host:port of SEG_GRPC_PORT")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the same server's HTTP")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the datasets")
    args = parser.parse_args()
    failures = check(args.grpc, args.url, args.data)
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
