# Two images from the repository's own pinned files (they resolve exactly what `make setup` does):
#   docker build -t eventpipe .                                  the image Kubeflow runs every component in
#   docker build --target serving -t eventpipe-serving .         a drop-in for the tensorflow/serving image
FROM python:3.10-slim AS base

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

# Runs like tensorflow/serving: docker run -p 8500:8500 -p 8501:8501 -e MODEL_NAME=eventpipe
#   -v "$PWD/demo/work/serving/eventpipe:/models/eventpipe" eventpipe-serving [server flags]
FROM base AS serving
ENV MODEL_NAME=model \
    MODEL_BASE_PATH=/models
EXPOSE 8500 8501
ENTRYPOINT ["/eventpipe/serving/container/entrypoint.sh"]

# The default (last) stage: the Kubeflow image.
FROM base AS kubeflow
# The KFP v2 compiler sets each task's command (the TFX container entrypoint); this default
# makes `docker run IMAGE --help` show the CLI.
ENTRYPOINT ["eventpipe"]
