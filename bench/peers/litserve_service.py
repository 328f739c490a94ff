"""The peer LitServe service (LitServe 0.2's LitAPI), as its users write it: the multipart
field `image` decoded with Pillow, the class map answered as a palette PNG.

    PEER_MODEL=app/shipped_models/unet-isbi.onnx \\
        .venv-bench/bin/python -m bench.peers.litserve_service --port 8000
    curl -F image=@slice.png localhost:8000/predict -o labels.png
"""

import argparse
import os

import litserve as ls
import numpy as np
from fastapi import Response
from PIL import Image

from bench.peers.common import ENV_DEVICE, decode, model_from_env, palette_image, png_bytes, predict


class PeerSegmentAPI(ls.LitAPI):  # type: ignore[misc]  # untyped in .venv
    def setup(self, device: str) -> None:
        self.model = model_from_env()

    # LitServe reads the parameter's annotation: none (as its users write it) passes the
    # form of a multipart request; any other would make FastAPI expect a query parameter.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return decode(Image.open(request["image"].file), self.model.spec)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return predict(self.model, pixels)

    def encode_response(self, labels: np.ndarray) -> Response:
        image = palette_image(labels, self.model.spec)
        return Response(content=png_bytes(image), media_type="image/png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    accelerator = "cuda" if os.environ.get(ENV_DEVICE) == "cuda" else "cpu"
    server = ls.LitServer(PeerSegmentAPI(), accelerator=accelerator)
    # no client.py written into the working directory
    server.run(port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
