"""Export a trained event model as the SavedModel every eventpipe consumer expects.

One exporter for teacher and student keeps the serving contract in one place:

- ``serving_default``: ``frames`` tf.string ``[None, None]``: 1..K encoded PNG/JPEG frames per event
  (short events are padded with "", which repeats the last frame; more than K is an error) -> the
  outputs;
- ``decoded_frames``: ``frames`` float32 ``[None, K, H, W, C]`` in [0, 1] -> the same outputs;
- ``serving_examples``: serialized ``tf.Example`` ``[None]`` of the layout -> the same outputs
  (what TFMA and batch scoring feed);
- outputs: ``probabilities`` [None, C], ``logits`` [None, C], ``class_id`` int64, ``class_name``
  string, ``best_frame`` int64 (argmax of the per-frame weights);
- ``assets.extra/event_spec.json`` inside the export (TF Serving ignores ``assets.extra``).

Decoding uses ``contract.layout`` so the served model sees exactly what training saw.
"""

from __future__ import annotations

import json
import os
from typing import Any

import tensorflow as tf

from contract import layout
from contract.layout import EventSpec

EXAMPLES_SIGNATURE = "serving_examples"
ASSETS_EXTRA = "assets.extra"


def output_tensors(model: Any, frames: Any, classes: Any) -> dict[str, Any]:
    """The contract's output dict for a model mapping frames -> {"logits", "frame_weights"}."""

    out = model(frames, training=False)
    logits = tf.cast(out["logits"], tf.float32)
    weights = tf.cast(out["frame_weights"], tf.float32)
    class_id = tf.argmax(logits, axis=-1, output_type=tf.int64)
    return {
        layout.OUT_PROBABILITIES: tf.nn.softmax(logits, axis=-1),
        layout.OUT_LOGITS: logits,
        layout.OUT_CLASS_ID: class_id,
        layout.OUT_CLASS: tf.gather(classes, class_id),
        layout.OUT_BEST_FRAME: tf.argmax(weights, axis=-1, output_type=tf.int64),
    }


def serving_signatures(model: Any, spec: EventSpec) -> dict[str, Any]:
    """Concrete functions for the three signatures, closed over ``model`` and ``spec``."""

    classes = tf.constant(list(spec.classes), dtype=tf.string)

    @tf.function(
        input_signature=[tf.TensorSpec([None, None], tf.string, name=layout.SERVING_INPUT)], autograph=False
    )
    def serve_encoded(frames: Any) -> dict[str, Any]:
        return output_tensors(model, layout.decode_frames(layout.pad_frames(frames, spec), spec), classes)

    @tf.function(
        input_signature=[tf.TensorSpec([None, *spec.input_shape], tf.float32, name=layout.DECODED_INPUT)],
        autograph=False,
    )
    def serve_decoded(frames: Any) -> dict[str, Any]:
        return output_tensors(model, frames, classes)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serve_examples(examples: Any) -> dict[str, Any]:
        parsed = layout.parse_batch(examples, spec)
        return output_tensors(model, parsed[layout.FRAMES], classes)

    return {
        "serving_default": serve_encoded.get_concrete_function(),
        layout.DECODED_SIGNATURE: serve_decoded.get_concrete_function(),
        EXAMPLES_SIGNATURE: serve_examples.get_concrete_function(),
    }


def export_saved_model(model: Any, spec: EventSpec, export_dir: str) -> str:
    """Write ``model`` (tf_keras, [B,K,H,W,C] -> {"logits", "frame_weights"}) as a SavedModel.

    The SavedModel holds the traced signatures and the model's variables, not Keras
    metadata: consumers use the signatures (``tf.saved_model.load``), and skipping Keras's
    per-layer serialization makes the export an order of magnitude faster. The model must
    hold plain (unsharded) variables; a DTensor-trained model's weights are copied into a plain
    one first (``Runner.plain_weights``, as ``trainer.teacher.loop`` does). Returns ``export_dir``.
    """

    signatures = serving_signatures(model, spec)
    servable = tf.Module()
    servable.model_variables = list(model.variables)  # what the signatures read
    tf.io.gfile.makedirs(export_dir)
    tf.saved_model.save(servable, export_dir, signatures=signatures)
    extra = os.path.join(export_dir, ASSETS_EXTRA)
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, layout.SPEC_FILE), "w") as f:
        f.write(json.dumps(spec.to_dict(), indent=2))
    return export_dir


def load_spec(export_dir: str) -> EventSpec:
    """The EventSpec stored in an export's ``assets.extra``."""
    return EventSpec.load(os.path.join(export_dir, ASSETS_EXTRA, layout.SPEC_FILE))
