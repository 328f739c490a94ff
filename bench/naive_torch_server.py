"""The naive baseline: a plain FastAPI handler running the torch model eagerly per request.
`SEG_BENCH_CHECKPOINT=runs/unet-isbi/best.pt uvicorn bench.naive_torch_server:app`
(`SEG_BENCH_DEVICE=cuda` runs it on the GPU)."""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from fastapi import FastAPI, Request, Response
from PIL import Image

from models.datasets import DEFAULT_DATA_ROOT
from models.predict import normalise, predict_logits
from models.registry import build_model, size_multiple
from models.tasks import get_task

torch.set_num_threads(os.cpu_count() or 1)
checkpoint = torch.load(os.environ["SEG_BENCH_CHECKPOINT"], map_location="cpu", weights_only=False)
task = get_task(checkpoint["task"], DEFAULT_DATA_ROOT)
model = build_model(checkpoint["arch"], **checkpoint["arch_options"])
model.load_state_dict(checkpoint["model"])
device = torch.device(os.environ.get("SEG_BENCH_DEVICE", "cpu"))
model.eval().to(device)
app = FastAPI()


@app.get("/ready")
def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/segment")
async def segment(request: Request) -> Response:
    image = Image.open(io.BytesIO(await request.body()))
    pixels = np.asarray(image.convert("L" if len(task.mean) == 1 else "RGB"))
    x = normalise(pixels, task.mean, task.std)
    labels = predict_logits(model, x.to(device), size_multiple(model)).argmax(1)[0].cpu()
    buffer = io.BytesIO()
    Image.fromarray(labels.numpy().astype(np.uint8)).save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png")
