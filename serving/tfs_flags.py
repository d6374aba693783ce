"""tensorflow_model_server's command line, flag by flag: what each one does in ``eventpipe serve``.

A command line written for TF Serving must start this server. Flags with a meaning here are
mapped to ``ServingConfig`` fields in ``serving.cli``; the rest are accepted and each one that
is given logs one line saying why it has no effect. Flags that ask for security this server
does not offer (TLS, ALTS) are refused rather than ignored: a client must not believe it has
what it does not.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

# Every flag `tensorflow_model_server --help` lists (TF Serving 2.16's model_servers/main.cc).
TF_SERVING_FLAGS = (
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads", "rest_api_timeout_in_ms",
    "rest_api_enable_cors_support", "enable_batching", "allow_version_labels_for_unavailable_models",
    "batching_parameters_file", "enable_per_model_batching_parameters", "model_config_file",
    "model_config_file_poll_wait_seconds", "model_name", "model_base_path", "num_load_threads",
    "num_unload_threads", "max_num_load_retries", "load_retry_interval_micros",
    "file_system_poll_wait_seconds", "flush_filesystem_caches", "tensorflow_session_parallelism",
    "tensorflow_session_config_file", "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism",
    "use_alts_credentials", "ssl_config_file", "platform_config_file", "per_process_gpu_memory_fraction",
    "saved_model_tags", "grpc_channel_arguments", "grpc_max_threads", "enable_model_warmup",
    "num_request_iterations_for_warmup", "version", "monitoring_config_file",
    "remove_unused_fields_from_bundle_metagraph", "prefer_tflite_model", "num_tflite_pools",
    "num_tflite_interpreters_per_pool", "enable_signature_method_name_check", "xla_cpu_compilation_enabled",
    "enable_profiler", "thread_pool_factory_config_file",
)  # fmt: skip


def flag_bool(text: str) -> bool:
    """TF Serving's boolean flags: ``--flag``, ``--flag=true``, ``--flag=false`` (or 1/0)."""
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# flag -> (value type, why it changes nothing here)
NO_EFFECT: dict[str, tuple[Callable[[str], object], str]] = {
    "grpc_socket_path": (str, "gRPC listens on TCP only (--port)"),
    "rest_api_timeout_in_ms": (int, "a REST request runs to completion; an idle connection closes after "
                                    "--read-timeout-seconds"),
    "rest_api_enable_cors_support": (flag_bool, "no CORS headers are sent; "
                                                "put a proxy in front for browsers"),
    "allow_version_labels_for_unavailable_models": (flag_bool, "labels may always name any version; "
                                                               "a request through a label whose version "
                                                               "is not loaded fails"),
    "enable_per_model_batching_parameters": (flag_bool, "one BatchingParameters applies to every model"),
    "num_load_threads": (int, "versions load one at a time, in the background, while the old one serves"),
    "num_unload_threads": (int, "a replaced version unloads once its last request is answered"),
    "max_num_load_retries": (int, "a version that failed to load is retried when its files change, "
                                  "not on a timer"),
    "load_retry_interval_micros": (int, "a version that failed to load is retried when its files change"),
    "flush_filesystem_caches": (flag_bool, "there is no filesystem cache to flush"),
    "tensorflow_session_config_file": (str, "thread pools come from --tensorflow_intra_op_parallelism and "
                                            "--tensorflow_inter_op_parallelism"),
    "platform_config_file": (str, "the platform is read from each version directory "
                                  "(SavedModel or model.tflite)"),
    "per_process_gpu_memory_fraction": (float, "TensorFlow's default GPU memory allocation applies"),
    "saved_model_tags": (str, "SavedModels load with the serve tag"),
    "enable_model_warmup": (flag_bool, "warm-up always runs: a version takes traffic only after its warm-up "
                                       "requests answer"),
    "num_request_iterations_for_warmup": (int, "each warm-up record is replayed once"),
    "remove_unused_fields_from_bundle_metagraph": (flag_bool, "only the signatures are kept "
                                                              "from the MetaGraphDef"),
    "num_tflite_pools": (int, "TFLite versions run on one single-threaded interpreter per core"),
    "num_tflite_interpreters_per_pool": (int, "TFLite versions run on one single-threaded interpreter "
                                              "per core"),
    "enable_signature_method_name_check": (flag_bool, "every signature answers Predict, "
                                                      "whatever its method name"),
    "xla_cpu_compilation_enabled": (flag_bool, "XLA JIT stays TensorFlow's default"),
    "enable_profiler": (flag_bool, "no profiler service is offered"),
    "thread_pool_factory_config_file": (str, "request threads come from --grpc_max_threads and "
                                             "--rest_api_num_threads"),
}  # fmt: skip

# flag -> (value type, the value that asks for nothing, why anything else is refused)
REFUSED_UNLESS_OFF: dict[str, tuple[Callable[[str], object], object, str]] = {
    "use_alts_credentials": (
        flag_bool,
        False,
        "this server speaks plaintext gRPC; terminate ALTS in front of it",
    ),
    "ssl_config_file": (str, "", "this server speaks plaintext gRPC and HTTP; terminate TLS in front of it"),
}

DEST = "tfs_{}"  # where argparse keeps a no-effect flag's value


METAVARS = {flag_bool: "BOOL", int: "N", float: "X", str: "VALUE"}


def _add(group: argparse._ArgumentGroup, name: str, kind: Callable[[str], object], help: str) -> None:
    extra = {"nargs": "?", "const": True} if kind is flag_bool else {}  # --flag alone means true
    group.add_argument(f"--{name}", dest=DEST.format(name), type=kind, default=None, metavar=METAVARS[kind],
                       help=help, **extra)  # fmt: skip


def add_flags(group: argparse._ArgumentGroup) -> None:
    """The flags without an effect here, and the refused ones, under TF Serving's names."""
    for name, (kind, why) in NO_EFFECT.items():
        _add(group, name, kind, f"accepted; no effect: {why}")
    for name, (kind, off, why) in REFUSED_UNLESS_OFF.items():
        _add(group, name, kind, f"refused unless {str(off).lower() or 'empty'}: {why}")


def refusals(args: argparse.Namespace) -> list[str]:
    """One message per security flag that asks for what this server does not offer."""
    out = []
    for name, (_, off, why) in REFUSED_UNLESS_OFF.items():
        value = getattr(args, DEST.format(name), None)
        if value is not None and value != off:
            out.append(f"--{name}={value}: {why}")
    return out


def no_effect_lines(args: argparse.Namespace) -> list[str]:
    """One line per no-effect flag the command line gave."""
    return [
        f"--{name}={getattr(args, DEST.format(name))} has no effect here: {why}"
        for name, (_, why) in NO_EFFECT.items()
        if getattr(args, DEST.format(name), None) is not None
    ]
