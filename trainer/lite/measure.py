"""What a model costs: parameters, FLOPs per event, bytes on disk, latency per event.

- FLOPs: TensorFlow's profiler over the frozen graph of one event (batch 1), i.e. the
  registered op statistics (convolutions, matmuls, elementwise ops; ``Einsum`` — used by
  attention — is registered here since TensorFlow has no statistic for it).
- Bytes: raw and gzipped (a directory is measured as a gzipped tar of its files).
- Latency: batch 1, one thread, p50/p99 over ``runs`` calls after ``warmup``. Each model lives
  in its own subprocess (thread settings apply from the start, no shared caches) and the
  variants are timed in alternating rounds, so load from other work on the machine hits them
  alike. TFLite runs in a process where ``import tensorflow`` fails, on the on-device runtime
  ``ondevice.runtime.lite_runtime`` chooses (LiteRT, else ``tflite_runtime``; or the one a job
  names), as on a device; each result names the runtime it was measured with.

Worker command line (used by ``latencies``; reads a number N per line, prints N timings)::

    python -m trainer.lite.measure worker --kind {savedmodel,keras,tflite} --path P --warmup W
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

from contract import (
    source,
    tfenv,  # noqa: F401  (before TensorFlow, also in the subprocess)
)
from ondevice.runtime import RUNTIME_ENV

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
            if name.endswith("/.ATTRIBUTES/VARIABLE_VALUE")
            and "optimizer" not in name.lower()
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
        total = (
            2 * int(np.prod(list(sizes.values())))
            if len(inputs.split(",")) == 2
            else int(np.prod(list(sizes.values())))
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

    fn = tf.function(lambda x: model(x, training=False), autograph=False)  # no control flow; saves seconds
    return flops_of_function(fn.get_concrete_function(tf.TensorSpec([1, *input_shape], tf.float32)))


def saved_model_flops_per_event(export_dir: str) -> int:
    """FLOPs of the ``decoded_frames`` signature on one event (decoding excluded)."""
    import tensorflow as tf

    from contract import layout
    from trainer.models.export import load_spec

    spec = load_spec(export_dir)
    loaded = tf.saved_model.load(export_dir)  # must outlive the traced function (owns the variables)
    signature = loaded.signatures[layout.DECODED_SIGNATURE]
    fn = tf.function(lambda x: signature(**{layout.DECODED_INPUT: x})[layout.OUT_LOGITS], autograph=False)
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


def _worker_env(runtime: str | None = None) -> dict[str, str]:
    extra = {"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    if runtime:
        extra[RUNTIME_ENV] = runtime
    return source.child_env(extra)


class _Worker:
    """A subprocess holding one loaded model; times ``n`` calls when asked (line protocol)."""

    def __init__(self, kind: str, path: str, warmup: int, runtime: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.path = kind, path
        command = [sys.executable, "-m", "trainer.lite.measure", "worker", "--kind", kind, "--path", path,
                   "--warmup", str(warmup)]  # fmt: skip
        # No preexec_fn: a worker ends at EOF on stdin, which a dead parent closes.
        self.process = subprocess.Popen(
            command, env=_worker_env(runtime), cwd=source.REPO_ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.info: dict[str, Any] = {}

    def wait_loaded(self) -> None:
        """Block until the model is loaded and warmed up (workers load side by side)."""
        self.info = self._reply()

    def _reply(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=30)
            raise RuntimeError(
                f"latency measurement of {self.path} ({self.kind}) failed:\n"
                f"{self.process.stderr.read()[-3000:]}"
            )
        return json.loads(line)

    def time(self, runs: int) -> list[float]:
        self.process.stdin.write(f"{runs}\n")
        self.process.stdin.flush()
        return self._reply()["times"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def latencies(
    variants: dict[str, tuple[str, ...]], *, runs: int = 200, warmup: int = 20, rounds: int = 10
) -> dict[str, dict[str, Any]]:
    """p50/p99 per event (batch 1, 1 thread) of several models, measured side by side.

    ``variants``: name -> (kind, path) or, for TFLite, (kind, path, runtime) to pin the
    interpreter package (``ondevice.runtime.RUNTIMES``; default: the one it chooses). Each
    model is loaded once in its own subprocess; the ``runs`` calls are split into ``rounds``
    that alternate between the models, so a busy machine slows every variant alike and the
    ratios stay meaningful.
    """
    workers: dict[str, _Worker] = {}
    try:
        for name, (kind, path, *runtime) in variants.items():
            workers[name] = _Worker(kind, path, warmup, *runtime)
        for worker in workers.values():  # started together: their TensorFlow imports overlap
            worker.wait_loaded()
        times: dict[str, list[float]] = {name: [] for name in variants}
        rounds = max(1, min(rounds, runs))
        for r in range(rounds):
            share = runs // rounds + (1 if r < runs % rounds else 0)
            for name, worker in workers.items():
                times[name].extend(worker.time(share))
        return {name: {**summarize(times[name]), **workers[name].info} for name in variants}
    finally:
        for worker in workers.values():
            worker.close()


def latency(kind: str, path: str, *, runs: int = 200, warmup: int = 20) -> dict[str, Any]:
    """p50/p99 latency per event (batch 1, 1 thread) of one model file/dir, in a fresh subprocess."""
    return latencies({"model": (kind, path)}, runs=runs, warmup=warmup, rounds=1)["model"]


def _load_tflite(path: str) -> tuple[Any, dict[str, Any]]:
    sys.modules["tensorflow"] = None  # type: ignore[assignment]  # a device has no TensorFlow
    from ondevice.runtime import LiteEventClassifier

    classifier = LiteEventClassifier(path, num_threads=1)
    prepared = classifier.prepare(
        np.random.default_rng(0).uniform(0, 1, classifier.input_shape).astype(np.float32)
    )
    info = {"kind": "tflite", "tensorflow_imported": False, "runtime": classifier.runtime.describe()}
    return (lambda: classifier.invoke(prepared)), info


def _load_tf(kind: str, path: str) -> tuple[Any, dict[str, Any]]:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from contract import layout

    if kind == "savedmodel":
        from trainer.models.export import load_spec

        shape = (1, *load_spec(path).input_shape)
        loaded = tf.saved_model.load(path)
        signature = loaded.signatures[layout.DECODED_SIGNATURE]

        def run(x: Any, _owner: Any = loaded) -> Any:
            return signature(**{layout.DECODED_INPUT: x})[layout.OUT_PROBABILITIES].numpy()
    else:
        from trainer.models.student import load_keras

        model = load_keras(path)
        shape = (1, *model.input_shape[1:])
        fn = tf.function(lambda x: model(x, training=False), autograph=False)

        def run(x: Any) -> Any:
            return fn(x)["logits"].numpy()

    x = tf.constant(np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32))
    return (lambda: run(x)), {"kind": kind}


def _serve(kind: str, path: str, warmup: int) -> int:
    """Worker loop: load, warm up, say ready; then for each line N on stdin time N calls."""
    call, info = _load_tflite(path) if kind == "tflite" else _load_tf(kind, path)
    for _ in range(warmup):
        call()
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        print(json.dumps({"times": times}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.lite.measure")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser(
        "worker", help="hold one model; time N calls per line N read from stdin (JSON out)"
    )
    worker.add_argument("--kind", choices=KINDS, required=True)
    worker.add_argument("--path", required=True)
    worker.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    return _serve(args.kind, args.path, args.warmup)


if __name__ == "__main__":
    sys.exit(main())
