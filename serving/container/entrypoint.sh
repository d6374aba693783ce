#!/bin/sh
# The serving image's entrypoint, with tensorflow/serving's contract: MODEL_NAME (model) under
# MODEL_BASE_PATH (/models) is served, gRPC on 8500 and REST on 8501, on every interface of the
# container. Arguments after the image name go to the server (a repeated flag: the last wins).
# EVENTPIPE names the command (tests run the module from a checkout).
set -e
MODEL_NAME="${MODEL_NAME:-model}"
MODEL_BASE_PATH="${MODEL_BASE_PATH:-/models}"
# shellcheck disable=SC2086  # EVENTPIPE may be a command with arguments
exec ${EVENTPIPE:-eventpipe} serve --host "${SERVING_HOST:-0.0.0.0}" --port=8500 --rest_api_port=8501 \
  --model_name="$MODEL_NAME" --model_base_path="$MODEL_BASE_PATH/$MODEL_NAME" "$@"
