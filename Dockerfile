# The image Kubeflow runs every eventpipe component in (`eventpipe compile-kubeflow --image ...`).
# Built only from the repository's own pinned files, so it resolves exactly what `make setup` does.
FROM python:3.10-slim

ENV TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=3 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libusb-1.0-0: tflite-support's metadata writers (the LiteConverter) load it when imported.
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends libusb-1.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /eventpipe
COPY requirements.lock .
RUN pip install --no-cache-dir -r requirements.lock
COPY setup.py README.md ./
COPY contract contract
COPY ondevice ondevice
COPY simulator simulator
COPY trainer trainer
COPY serving serving
COPY components components
COPY pipeline pipeline
RUN pip install --no-cache-dir --no-deps .

# The KFP v2 compiler sets each task's command (the TFX container entrypoint); this default
# makes `docker run IMAGE --help` show the CLI.
ENTRYPOINT ["eventpipe"]
