"""The peer BentoML service (BentoML 1.4's @bentoml.service class), as its users write it:
a PIL image in (multipart field `image`), a PIL palette image out (BentoML answers PNG).

    PEER_MODEL=app/shipped_models/unet-isbi.onnx \\
        .venv-bench/bin/bentoml serve bench.peers.bento_service:PeerSegmenter --port 3000
    curl -F image=@slice.png localhost:3000/segment -o labels.png
"""

from __future__ import annotations

import bentoml
from PIL.Image import Image

from bench.peers.common import decode, model_from_env, palette_image, predict


@bentoml.service
class PeerSegmenter:
    def __init__(self) -> None:
        self.model = model_from_env()

    @bentoml.api  # type: ignore[untyped-decorator]  # untyped in .venv
    def segment(self, image: Image) -> Image:
        labels = predict(self.model, decode(image, self.model.spec))
        return palette_image(labels, self.model.spec)
