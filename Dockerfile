# segserve: the segmentation service with its shipped models, no torch.
# Two variants from this file (see README "Deploy"):
#   docker build --network host -t segserve:gpu .                          # default
#   docker build --network host --build-arg RUNTIME=cpu -t segserve:cpu .
# RUNTIME=gpu installs onnxruntime-gpu with the CUDA and cuDNN wheels from PyPI (runs on CPU,
# and says so, where no GPU is visible); RUNTIME=cpu installs plain onnxruntime.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG RUNTIME=gpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The locks first: this layer stays cached until a lock file changes. --require-hashes and
# --no-deps install exactly the locked set, so two builds of one commit hold the same packages.
COPY requirements/ requirements/
RUN python -m venv /opt/segserve \
 && /opt/segserve/bin/pip install --require-hashes --no-deps \
        -r "requirements/runtime-${RUNTIME}.txt" \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --no-deps -r requirements/build.txt
# Only app/ and segserve/ (the client) are copied: the wheel holds the service, its models
# and the client, not the torch code.
COPY pyproject.toml README.md ./
COPY app/ app/
COPY segserve/ segserve/
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/segserve/bin/pip install --no-deps /wheels/segserve-*.whl \
 && /opt/segserve/bin/pip uninstall --yes pip setuptools \
 && /opt/segserve/bin/python -c "import app.main, onnxruntime; print(onnxruntime.__version__)"

FROM ${BASE_IMAGE}
ARG RUNTIME=gpu
LABEL org.opencontainers.image.title="segserve" \
      org.opencontainers.image.description="Semantic segmentation over HTTP (U-Net on ISBI 2012 EM, dilated network on CamVid), onnxruntime" \
      org.opencontainers.image.licenses="MIT" \
      io.segserve.runtime="${RUNTIME}"
RUN useradd --system --user-group --uid 10001 --no-create-home --shell /usr/sbin/nologin segserve
COPY --from=build /opt/segserve /opt/segserve
# HOME=/tmp: onnxruntime keeps a device-id file in HOME, and the user has no home (the root
# filesystem may be read-only; /tmp is the writable tmpfs/emptyDir).
ENV PATH=/opt/segserve/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEG_HOST=0.0.0.0 \
    SEG_PORT=8000 \
    SEG_GRPC_PORT=8081
USER 10001:10001
# HTTP (REST, /v1 and /v2) and gRPC (the Open Inference Protocol; SEG_GRPC_PORT= turns it off).
EXPOSE 8000 8081
# `segserve healthcheck` asks /health/ready on SEG_PORT (exec form cannot expand variables).
# The start period covers model loading and warm-up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["segserve", "healthcheck"]
# Exec form: segserve (uvicorn) is PID 1 and gets SIGTERM itself, stops accepting and drains
# in-flight requests for up to SEG_SHUTDOWN_TIMEOUT_S seconds.
STOPSIGNAL SIGTERM
CMD ["segserve", "serve"]
