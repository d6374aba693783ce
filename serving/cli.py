"""``eventpipe serve`` and ``eventpipe device-run``.

No TensorFlow at import time: ``device-run`` must work where TensorFlow is not installed,
and ``serve`` imports the server (and TensorFlow) only when it runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from contract.config import add_config_flags, load_config
from contract.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="TF-Serving-compatible server (REST + gRPC) for SavedModel and TFLite versions",
        description=(
            "Serve <model-base-path>/<model-name>/<version>/ (SavedModel or model.tflite) with TF Serving's "
            "REST and gRPC APIs. New versions are loaded in the background and swapped in without dropping "
            "requests; version labels come from <base>/<name>/labels.json, e.g. {\"stable\": 1, \"canary\": 2}."
        ),
    )
    add_config_flags(p)
    p.add_argument("--model-base-path", dest="run.serving_base", default=None,
                   help="directory holding <model-name>/<version>/ (default: serving/ beside the pipeline root, <workdir>/serving)")
    p.add_argument("--model-name", dest="serving.model_name", default=None, help="model to serve (eventpipe)")
    p.add_argument("--rest-port", dest="serving.rest_port", type=int, default=None,
                   help="REST port (8501); 0 picks a free port")
    p.add_argument("--grpc-port", dest="serving.grpc_port", type=int, default=None,
                   help="gRPC port (8500); 0 picks a free port, -1 disables gRPC")
    p.add_argument("--host", dest="serving.host", default=None,
                   help="address to bind (127.0.0.1; use 0.0.0.0 to accept remote clients)")
    p.add_argument("--version-policy", dest="serving.version_policy", default=None,
                   help="latest | all | specific:1,2 (latest)")
    p.add_argument("--max-batch-size", dest="serving.max_batch_size", type=int, default=None,
                   help="rows per merged SavedModel call; 0 or 1 turns batching off (16); "
                        "TFLite versions run on an interpreter pool instead")
    p.add_argument("--batch-timeout-ms", dest="serving.batch_timeout_ms", type=float, default=None,
                   help="longest a request waits for others to join its batch (2.0)")
    p.add_argument("--poll-seconds", dest="serving.poll_seconds", type=float, default=None,
                   help="how often the base path is scanned for new versions (1.0)")
    p.add_argument("--max-body-bytes", dest="serving.max_body_bytes", type=int, default=None,
                   help="largest request body accepted; larger ones get 413 (64 MiB)")
    p.add_argument("--max-tensor-elements", dest="serving.max_tensor_elements", type=int, default=None,
                   help="elements a gRPC request tensor may declare; larger ones are refused before "
                        "anything is allocated (4194304)")
    p.add_argument("--read-timeout-seconds", dest="serving.read_timeout_seconds", type=float, default=None,
                   help="REST: close a connection that sends nothing for this long (30)")
    p.add_argument("--max-connections", dest="serving.max_connections", type=int, default=None,
                   help="REST connections served at once; more are answered 503 and closed (64)")
    p.add_argument("--version-labels", dest="serving.version_labels", default=None,
                   help="JSON file of label -> version (default <base>/<name>/labels.json)")
    p.add_argument("--prefer-tflite", dest="serving.prefer_tflite", action="store_const", const=True, default=None,
                   help="serve model.tflite when a version directory also holds a SavedModel")
    p.add_argument("--port-file", default="", help="write {rest_port, grpc_port, pid} as JSON here once listening")
    p.set_defaults(func=serve_command)

    d = subparsers.add_parser(
        "device-run",
        help="classify events on-device with a .tflite model (LiteRT or tflite-runtime, no TensorFlow) and time it",
    )
    d.add_argument("--model", required=True, help="the released model.tflite")
    d.add_argument("--data", required=True, help="a *.jsonl manifest or a directory of them")
    d.add_argument("--limit", type=int, default=0, help="classify at most N events (0: all)")
    d.add_argument("--threads", type=int, default=0, help="interpreter threads (0: one per CPU)")
    d.add_argument("--show", type=int, default=20, help="print the first N predictions (20)")
    d.add_argument("--out", default="", help="write every prediction as JSON Lines here")
    d.set_defaults(func=device_run_command)


def serve_command(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    s = cfg.serving
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from serving.server import ModelServer  # deferred: every CLI command starts without TensorFlow

    server = ModelServer(s, cfg.serving_base)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    if args.port_file:
        server.write_port_file(args.port_file)
    grpc = f"gRPC {s.host}:{server.grpc_port}" if server.grpc_port else "gRPC off"
    print(
        f"eventpipe serve: model {s.model_name} from {server.manager.directory}; "
        f"REST http://{s.host}:{server.rest_port}  {grpc}",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


def device_run_command(args: argparse.Namespace) -> int:
    from ondevice.device_runner import run_device  # deferred: device-run needs no server code

    if args.limit < 0:
        raise UserError("--limit must be >= 0")
    run_device(args.model, args.data, limit=args.limit, threads=args.threads, show=args.show, out_path=args.out)
    sys.stdout.flush()
    return 0
