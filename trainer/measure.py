"""What a model costs: parameters, FLOPs per event, bytes on disk, latency per event.

- FLOPs: TensorFlow's profiler over the frozen graph of one event (batch 1), i.e. the
  registered op statistics (convolutions, matmuls, elementwise ops; ``Einsum`` — used by
  attention — is registered here since TensorFlow has no statistic for it).
- Bytes: raw and gzipped (a directory is measured as a gzipped tar of its files).
- Latency: batch 1, one thread, p50/p99 over ``runs`` calls after ``warmup``, each measurement
  in a fresh subprocess so thread settings apply from the start and variants do not share
  caches. TFLite latency runs in a process where ``import tensorflow`` fails
  (``tflite_runtime`` only), as on a device.

Command line (used by ``latency``)::

    python -m trainer.measure latency --kind {savedmodel,keras,tflite} --path P --runs N --warmup W
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from typing import Any

import numpy as np

from pipeline import tfenv  # noqa: F401  (before TensorFlow, also in the subprocess)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("savedmodel", "keras", "tflite")


# -- size ------------------------------------------------------------------------------------
def count_params(model: Any) -> int:
    return int(model.count_params())


def saved_model_params(export_dir: str) -> int:
    """Number of values in a SavedModel's variables (what its checkpoint holds; no optimizer)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    return int(
        sum(
            int(np.prod(shape))
            for name, shape in reader.get_variable_to_shape_map().items()
            if name.endswith("/.ATTRIBUTES/VARIABLE_VALUE") and "optimizer" not in name.lower()
            and "save_counter" not in name
        )
    )


def path_bytes(path: str) -> dict[str, int]:
    """``{"raw": bytes, "gzipped": bytes}`` of a file, or of a directory (as a gzipped tar)."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
        return {"raw": len(data), "gzipped": len(gzip.compress(data, compresslevel=9, mtime=0))}
    raw = 0
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tar:
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(root, name)
                    raw += os.path.getsize(full)
                    info = tar.gettarinfo(full, arcname=os.path.relpath(full, path))
                    info.mtime = 0
                    with open(full, "rb") as f:
                        tar.addfile(info, f)
    return {"raw": raw, "gzipped": len(buffer.getvalue())}


# -- FLOPs -----------------------------------------------------------------------------------
def _register_einsum_flops() -> None:
    """FLOPs of a two-operand ``Einsum``: 2 x the product of every index's size."""
    from tensorflow.python.framework import ops

    def einsum_flops(graph: Any, node: Any) -> Any:
        from tensorflow.python.framework import graph_util

        equation = node.attr["equation"].s.decode()
        inputs, _ = equation.replace(" ", "").split("->")
        sizes: dict[str, int] = {}
        for i, term in enumerate(inputs.split(",")):
            shape = graph_util.tensor_shape_from_node_def_name(graph, node.input[i])
            for letter, dim in zip(term, shape.as_list(), strict=False):
                sizes[letter] = int(dim or 1)
        total = 2 * int(np.prod(list(sizes.values()))) if len(inputs.split(",")) == 2 else int(
            np.prod(list(sizes.values()))
        )
        return ops.OpStats("flops", total)

    try:
        ops.RegisterStatistics("Einsum", "flops")(einsum_flops)
    except KeyError:  # already registered (by us, earlier in this process)
        pass


def flops_of_function(function: Any) -> int:
    """FLOPs of one call of a concrete function with fully static input shapes."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    _register_einsum_flops()
    frozen = convert_variables_to_constants_v2(function)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        profile = tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op",
                                                options=options)  # fmt: skip
    return int(profile.total_float_ops)


def keras_flops_per_event(model: Any, input_shape: tuple[int, ...]) -> int:
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False))
    return flops_of_function(fn.get_concrete_function(tf.TensorSpec([1, *input_shape], tf.float32)))


def saved_model_flops_per_event(export_dir: str) -> int:
    """FLOPs of the ``decoded_frames`` signature on one event (decoding excluded)."""
    import tensorflow as tf

    from pipeline import layout
    from trainer.export import load_spec

    spec = load_spec(export_dir)
    loaded = tf.saved_model.load(export_dir)  # must outlive the traced function (owns the variables)
    signature = loaded.signatures[layout.DECODED_SIGNATURE]
    fn = tf.function(lambda x: signature(**{layout.DECODED_INPUT: x})[layout.OUT_LOGITS])
    return flops_of_function(fn.get_concrete_function(tf.TensorSpec([1, *spec.input_shape], tf.float32)))


# -- latency ---------------------------------------------------------------------------------
def summarize(times_s: list[float]) -> dict[str, float]:
    ms = np.asarray(times_s, dtype=np.float64) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "runs": int(len(ms)),
    }


def latency(kind: str, path: str, *, runs: int = 200, warmup: int = 20, timeout: float = 600) -> dict[str, Any]:
    """p50/p99 latency per event (batch 1, 1 thread) of a model file/dir, in a fresh subprocess."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update({"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"})
    command = [sys.executable, "-m", "trainer.measure", "latency", "--kind", kind, "--path", path,
               "--runs", str(runs), "--warmup", str(warmup)]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"latency measurement of {path} ({kind}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _time_calls(call: Any, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def _measure_tflite(path: str, runs: int, warmup: int) -> dict[str, Any]:
    sys.modules["tensorflow"] = None  # type: ignore[assignment]  # a device has no TensorFlow
    from trainer.lite_runtime import LiteEventClassifier

    classifier = LiteEventClassifier(path, num_threads=1)
    rng = np.random.default_rng(0)
    prepared = classifier.prepare(rng.uniform(0, 1, classifier.input_shape).astype(np.float32))
    result = summarize(_time_calls(lambda: classifier.invoke(prepared), runs, warmup))
    result["tensorflow_imported"] = False
    return result


def _measure_tf(kind: str, path: str, runs: int, warmup: int) -> dict[str, Any]:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from pipeline import layout

    if kind == "savedmodel":
        from trainer.export import load_spec

        shape = (1, *load_spec(path).input_shape)
        loaded = tf.saved_model.load(path)
        signature = loaded.signatures[layout.DECODED_SIGNATURE]

        def run(x: Any) -> Any:
            return signature(**{layout.DECODED_INPUT: x})[layout.OUT_PROBABILITIES].numpy()
    else:
        from trainer.student_model import load_keras

        model = load_keras(path)
        shape = (1, *model.input_shape[1:])
        fn = tf.function(lambda x: model(x, training=False))

        def run(x: Any) -> Any:
            return fn(x)["logits"].numpy()

    x = tf.constant(np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32))
    return summarize(_time_calls(lambda: run(x), runs, warmup))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.measure")
    sub = parser.add_subparsers(dest="command", required=True)
    lat = sub.add_parser("latency", help="latency per event at batch 1, 1 thread; prints JSON")
    lat.add_argument("--kind", choices=KINDS, required=True)
    lat.add_argument("--path", required=True)
    lat.add_argument("--runs", type=int, default=200)
    lat.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    if args.kind == "tflite":
        result = _measure_tflite(args.path, args.runs, args.warmup)
    else:
        result = _measure_tf(args.kind, args.path, args.runs, args.warmup)
    result["kind"] = args.kind
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
