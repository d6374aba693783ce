"""``eventpipe serve``: the TF-Serving-compatible server's command line.

No TensorFlow at import time (``eventpipe --help`` must stay fast): the server and TensorFlow
are imported only when ``serve`` runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from contract.config import add_config_flags, load_config
from contract.errors import UserError
from serving import tfs_flags
from serving.tfs_flags import flag_bool


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="TF-Serving-compatible server (REST + gRPC) for SavedModel and TFLite versions",
        description=(
            "Serve <model_base_path>/<version>/ (SavedModel or model.tflite) with TF Serving's REST and gRPC "
            "APIs and TF Serving's flags and files, or every model of a --model_config_file. "
            "New versions load in the background (after replaying assets.extra/tf_serving_warmup_requests) "
            "and are swapped in without dropping requests; version labels come from the config file's "
            'version_labels or <model_base_path>/labels.json, e.g. {"stable": 1, "canary": 2}.'
        ),
    )
    add_config_flags(p)
    tfs = p.add_argument_group("TF Serving's flags (tensorflow_model_server's names and meanings)")
    tfs.add_argument(
        "--model_name",
        "--model-name",
        dest="serving.model_name",
        default=None,
        help="name of the model (eventpipe)",
    )
    tfs.add_argument(
        "--model_base_path",
        "--model-base-path",
        dest="serving.model_base_path",
        default=None,
        help="the directory of version directories <model_base_path>/<version>/ (default: the "
        "pusher's <workdir>/serving/<model_name>)",
    )
    tfs.add_argument(
        "--model_config_file",
        dest="serving.model_config_file",
        default=None,
        help="ModelServerConfig text proto listing several models (name, base_path, "
        "model_version_policy, version_labels); replaces --model_name/--model_base_path",
    )
    tfs.add_argument(
        "--model_config_file_poll_wait_seconds",
        dest="serving.model_config_file_poll_wait_seconds",
        type=float,
        default=None,
        help="re-read --model_config_file this often (0: never)",
    )
    tfs.add_argument(
        "--port",
        dest="serving.grpc_port",
        type=int,
        default=None,
        help="gRPC port (8500); 0 picks a free port",
    )
    tfs.add_argument(
        "--rest_api_port",
        dest="serving.rest_port",
        type=_rest_port,
        default=None,
        help="REST port (8501); 0 turns REST off, as in TF Serving",
    )
    tfs.add_argument(
        "--rest_api_num_threads",
        "--max-connections",
        dest="serving.max_connections",
        type=int,
        default=None,
        help="REST requests served at once; more connections get 503 and close (64)",
    )
    tfs.add_argument(
        "--file_system_poll_wait_seconds",
        "--poll-seconds",
        dest="serving.poll_seconds",
        type=float,
        default=None,
        help="how often base paths are scanned for new versions; 0 scans once (1)",
    )
    tfs.add_argument(
        "--enable_batching",
        dest="serving.enable_batching",
        type=flag_bool,
        nargs="?",
        const=True,
        default=None,
        help="dynamic batching of SavedModel requests (off, as in TF Serving)",
    )
    tfs.add_argument(
        "--batching_parameters_file",
        dest="serving.batching_parameters_file",
        default=None,
        help="BatchingParameters text proto (max_batch_size, batch_timeout_micros, num_batch_threads)",
    )
    tfs.add_argument(
        "--tensorflow_intra_op_parallelism",
        dest="serving.intra_op_threads",
        type=int,
        default=None,
        help="threads one TensorFlow op may use; 0: TensorFlow's default, one per core (0)",
    )
    tfs.add_argument(
        "--tensorflow_inter_op_parallelism",
        dest="serving.inter_op_threads",
        type=int,
        default=None,
        help="TensorFlow ops run at once; 0: TensorFlow's default (0)",
    )
    tfs.add_argument(
        "--grpc_max_threads",
        dest="serving.grpc_threads",
        type=int,
        default=None,
        help="gRPC requests handled at once (32)",
    )
    tfs.add_argument(
        "--grpc_channel_arguments",
        dest="serving.grpc_channel_arguments",
        default=None,
        help="gRPC server arguments, key=value,... (e.g. grpc.max_connection_age_ms=2000)",
    )
    tfs.add_argument(
        "--tensorflow_session_parallelism",
        type=int,
        default=None,
        help="sets both TensorFlow thread pools; not with the two flags below (0)",
    )
    tfs.add_argument(
        "--prefer_tflite_model",
        dest="serving.prefer_tflite",
        type=flag_bool,
        nargs="?",
        const=True,
        default=None,
        help="serve model.tflite when a version directory also holds a SavedModel",
    )
    tfs.add_argument(
        "--version",
        dest="tfs_version",
        action="store_true",
        help="print the server's and TensorFlow's versions, and exit",
    )
    tfs.add_argument(
        "--monitoring_config_file",
        dest="serving.monitoring_config_file",
        default=None,
        help="MonitoringConfig text proto: prometheus_config { enable: true path: ... } "
        "(default: Prometheus on at /monitoring/prometheus/metrics)",
    )
    tfs_flags.add_flags(p.add_argument_group(
        "TF Serving's flags accepted without effect here (each one given logs why)"
    ))  # fmt: skip
    p.add_argument(
        "--host",
        dest="serving.host",
        default=None,
        help="address to bind (127.0.0.1; use 0.0.0.0 to accept remote clients)",
    )
    p.add_argument(
        "--version-policy",
        dest="serving.version_policy",
        default=None,
        help="latest | all | specific:1,2 (latest); a config file's model_version_policy wins",
    )
    p.add_argument(
        "--max-batch-size",
        dest="serving.max_batch_size",
        type=int,
        default=None,
        help="rows per merged SavedModel call; 0 or 1 turns batching off (16); "
        "TFLite versions run on an interpreter pool instead",
    )
    p.add_argument(
        "--batch-timeout-ms",
        dest="serving.batch_timeout_ms",
        type=float,
        default=None,
        help="longest a request waits for others to join its batch (2.0)",
    )
    p.add_argument(
        "--max-body-bytes",
        dest="serving.max_body_bytes",
        type=int,
        default=None,
        help="largest request body accepted; larger ones get 413 (64 MiB)",
    )
    p.add_argument(
        "--max-tensor-elements",
        dest="serving.max_tensor_elements",
        type=int,
        default=None,
        help="elements a gRPC request tensor may declare; larger ones are refused before "
        "anything is allocated (4194304)",
    )
    p.add_argument(
        "--read-timeout-seconds",
        dest="serving.read_timeout_seconds",
        type=float,
        default=None,
        help="REST: close a connection that sends nothing for this long (30)",
    )
    p.add_argument(
        "--version-labels",
        dest="serving.version_labels",
        default=None,
        help="JSON file of label -> version (default <model_base_path>/labels.json)",
    )
    p.add_argument(
        "--prefer-tflite",
        dest="serving.prefer_tflite",
        action="store_const",
        const=True,
        default=None,
        help="serve model.tflite when a version directory also holds a SavedModel",
    )
    p.add_argument(
        "--port-file",
        default="",
        help="write {rest_port, grpc_port, pid, models} as JSON here once listening",
    )
    p.set_defaults(func=serve_command)


def _rest_port(text: str) -> int:
    """TF Serving's ``--rest_api_port``: 0 means no REST front end (the config's -1)."""
    port = int(text)
    if port < 0:
        raise argparse.ArgumentTypeError(f"--rest_api_port must be >= 0, got {port}")
    return port if port > 0 else -1


def serve_command(args: argparse.Namespace) -> int:
    if args.tfs_version:
        print(version_text())
        return 0
    refused = tfs_flags.refusals(args)
    if refused:
        raise UserError("; ".join(refused))
    cfg = load_config(args)
    s = cfg.serving
    session = args.tensorflow_session_parallelism
    if session:  # TF Serving: both pools, only where neither is set on its own; all three is an error
        if s.intra_op_threads or s.inter_op_threads:
            raise UserError(
                "--tensorflow_session_parallelism cannot be given with --tensorflow_intra_op_parallelism or "
                "--tensorflow_inter_op_parallelism (as in TF Serving): give one or the other"
            )
        s.intra_op_threads = s.inter_op_threads = session
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for line in tfs_flags.no_effect_lines(args):
        logging.getLogger("eventpipe.serve").info(line)
    from serving.server import ModelServer, configure_tensorflow  # deferred: no TensorFlow at CLI start

    server = ModelServer(s, os.path.join(cfg.serving_base, s.model_name))  # checks every argument first
    configure_tensorflow(s)  # process-wide, before the first model loads
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    if args.port_file:
        server.write_port_file(args.port_file)
    print(f"eventpipe serve: {server.endpoints()}", flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


def version_text() -> str:
    """``--version``: tensorflow_model_server's two lines, naming this server and its TensorFlow."""
    from importlib import metadata

    try:
        ours = metadata.version("eventpipe")
    except metadata.PackageNotFoundError:
        ours = "unknown"
    try:
        tf_version = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        tf_version = "not installed"
    return f"TensorFlow ModelServer: eventpipe-serve {ours}\nTensorFlow Library: {tf_version}"
