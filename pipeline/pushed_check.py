"""The pushed model, checked where users will serve it from: the ServingValidator answered for
the candidate before the push; this loads the version the EventPusher wrote under the serving
base, sends one real eval event over REST and keeps the request for the printed curl line."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import time
import urllib.request
from typing import Any

import tensorflow as tf

from contract import layout
from contract.config import Config
from pipeline.summary import venv_tool
from serving.server import ModelServer

PREDICT_REQUEST = "predict_request.json"  # the served check's request body, in the workdir


def check_pushed_model(cfg: Config, examples_uri: str) -> dict[str, Any]:
    """Start the server on the pushed models, send one real REST predict, and stop it."""

    spec = layout.EventSpec.load(examples_uri)
    event = _first_event(examples_uri)
    one_request = dataclasses.replace(
        cfg.serving, host="127.0.0.1", rest_port=0, grpc_port=-1, max_batch_size=1
    )
    server = ModelServer(one_request, os.path.join(cfg.serving_base, cfg.serving.model_name)).start()
    try:
        if not server.wait_until_available(timeout=120):
            return {"ok": False, "error": "the pushed model did not become AVAILABLE within 120 s"}
        frames = [{"b64": base64.b64encode(f).decode()} for f in event["frames"][: spec.frames]]
        frames += [{"b64": ""}] * (spec.frames - len(frames))
        body = json.dumps({"instances": [{layout.SERVING_INPUT: frames}]}).encode()
        rest_port = cfg.serving.rest_port if cfg.serving.rest_port > 0 else 8501  # for the printed lines
        request_file = os.path.join(cfg.workdir, PREDICT_REQUEST)  # for the curl line the summary prints
        with open(request_file, "wb") as f:
            f.write(body)
        url = f"http://127.0.0.1:{server.rest_port}/v1/models/{cfg.serving.model_name}:predict"
        started = time.perf_counter()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        prediction = answer["predictions"][0]
        return {
            "ok": True,
            "url": url,
            "event_id": event["event_id"],
            "label": event["label"],
            "predicted": prediction.get(layout.OUT_CLASS),
            "best_frame": prediction.get(layout.OUT_BEST_FRAME),
            "probability": max(prediction.get(layout.OUT_PROBABILITIES, [0.0])),
            "milliseconds": round((time.perf_counter() - started) * 1000, 1),
            "request_file": request_file,
            "model_name": cfg.serving.model_name,
            "rest_port": rest_port,
            "serve_command": [
                venv_tool("eventpipe"), "serve", "--model_name", cfg.serving.model_name,
                "--model_base_path", os.path.join(cfg.serving_base, cfg.serving.model_name),
                "--rest_api_port", str(rest_port),
            ],
        }  # fmt: skip
    finally:
        server.stop()


def _first_event(examples_uri: str) -> dict[str, Any]:
    files = sorted(tf.io.gfile.glob(os.path.join(layout.split_dir(examples_uri, layout.EVAL), "*")))
    record = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").take(1)))
    example = tf.train.Example.FromString(record.numpy())
    f = example.features.feature
    return {
        "event_id": f[layout.EVENT_ID].bytes_list.value[0].decode(),
        "label": f[layout.LABEL_NAME].bytes_list.value[0].decode(),
        "frames": list(f[layout.FRAMES].bytes_list.value),
    }
