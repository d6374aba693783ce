"""The pretext model, its NT-Xent loss, and the pre-trained backbone as a file.

The pretext model is the teacher's backbone (``trainer.models.teacher.frame_embeddings``,
the very layers and names the teacher has) followed by a projection head, as in SimCLR
(Chen et al. 2020): the loss is taken on the head's output and the head is thrown away, so
the backbone keeps what the augmentations do not destroy. The head is the wide,
parameter-heavy, compute-light part, which is why it is the model-parallel part under the
hybrid strategy (``proj_*`` kernels sharded like the teacher's ``fc_*``).

The backbone leaves the Pretrainer as ``backbone.npz`` (every weight of every ``conv*`` layer,
keyed ``<layer>/<index>``) plus ``backbone.json`` (the architecture it fits): a teacher built
with the same ``teacher.conv_filters``, ``teacher.norm`` and ``teacher.norm_groups`` loads it by
layer name.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from contract import files
from contract.config import PretrainConfig, TeacherConfig
from contract.errors import UserError
from contract.layout import EventSpec
from trainer.models.teacher import FeatureRelayout, backbone_layers, frame_embeddings

PROJ_PREFIX = "proj_"
PROJ_OUT = "proj_out"
PICK = "pick"
BACKBONE_WEIGHTS = "backbone.npz"
BACKBONE_INFO = "backbone.json"
LEGACY_NORM_GROUPS = 8  # what a backbone.json written before teacher.norm_groups existed was built with


class PickFrame(keras.layers.Layer):
    """``([B, K, F], one-hot [B, K]) -> [B, F]``: the embedding of the picked frame.

    A masked sum rather than a gather: element-wise ops and a reduction lay out under DTensor
    with the batch sharded, a batched gather does not.
    """

    @tf.autograph.experimental.do_not_convert  # plain tensor code
    def call(self, inputs: Any, training: Any = None) -> Any:  # Keras passes training
        embeddings, pick = inputs
        return tf.reduce_sum(embeddings * tf.cast(pick, embeddings.dtype)[..., None], axis=1)


def build_pretext(
    spec: EventSpec, teacher: TeacherConfig, pretrain: PretrainConfig, *, feature_layout: Any = None
) -> Any:
    """``{frames [B,K,H,W,C], pick [B,K]} -> z [B, projection_units[-1]]``.

    ``feature_layout``: a DTensor layout the picked embeddings are relaid out to before the
    head (hybrid: replicated, the all-gather of the paper's 1-D layout); None elsewhere.
    """
    frames = keras.Input(shape=spec.input_shape, name="frames", dtype="float32")
    pick = keras.Input(shape=(spec.frames,), name=PICK, dtype="float32")
    h = PickFrame(name="pick_frame")([frame_embeddings(frames, spec, teacher), pick])
    h = FeatureRelayout(feature_layout, name="pretext_features")(h)
    for i, units in enumerate(pretrain.projection_units[:-1]):
        h = keras.layers.Dense(units, activation="relu", name=f"{PROJ_PREFIX}{i}")(h)
    z = keras.layers.Dense(pretrain.projection_units[-1], name=PROJ_OUT)(h)
    return keras.Model({"frames": frames, PICK: pick}, z, name="pretext")


def nt_xent(z_a: Any, z_b: Any, temperature: float) -> Any:
    """NT-Xent (normalised temperature-scaled cross-entropy) of ``B`` positive pairs.

    Each of the ``2B`` views must pick its partner among the ``2B - 1`` others by cosine
    similarity / ``temperature``. The self-similarity is removed from the softmax by
    subtraction (every row's largest term is its own, 1/T) instead of an identity mask, so the
    loss has no constant tensors and runs unchanged on a DTensor mesh.
    """
    z = tf.math.l2_normalize(tf.concat([z_a, z_b], axis=0), axis=-1)
    inv_t = 1.0 / temperature
    sims = tf.matmul(z, z, transpose_b=True) * inv_t
    own = tf.reduce_sum(z * z, axis=-1) * inv_t
    others = tf.reduce_sum(tf.exp(sims - inv_t), axis=-1) - tf.exp(own - inv_t)
    log_partition = inv_t + tf.math.log(tf.maximum(others, 1e-30))
    half = tf.shape(z_a)[0]
    positive = tf.reduce_sum(z[:half] * z[half:], axis=-1) * inv_t
    return tf.reduce_mean(log_partition - tf.concat([positive, positive], axis=0))


def pretext_loss(model: Any, temperature: float) -> Any:
    """``(view_a, pick_a, view_b, pick_b) -> NT-Xent`` of ``model``'s two views (training mode):
    the one forward pass every strategy differentiates."""

    def loss(view_a: Any, pick_a: Any, view_b: Any, pick_b: Any) -> Any:
        z_a = model({"frames": view_a, PICK: pick_a}, training=True)
        z_b = model({"frames": view_b, PICK: pick_b}, training=True)
        return nt_xent(z_a, z_b, temperature)

    return loss


def save_backbone(
    model: Any, directory: str, spec: EventSpec, teacher: TeacherConfig, extra: dict[str, Any]
) -> str:
    """Write the backbone of ``model`` (pretext or teacher) to ``directory``; returns the weights path."""
    os.makedirs(directory, exist_ok=True)
    arrays = {
        f"{layer.name}/{i}": w for layer in backbone_layers(model) for i, w in enumerate(layer.get_weights())
    }
    path = os.path.join(directory, BACKBONE_WEIGHTS)
    np.savez(path, **arrays)
    info = {"conv_filters": list(teacher.conv_filters), "norm": teacher.norm,
            "norm_groups": teacher.norm_groups, "input_shape": list(spec.input_shape),
            "layers": sorted({k.split("/")[0] for k in arrays}), **extra}  # fmt: skip
    with open(os.path.join(directory, BACKBONE_INFO), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return path


def backbone_dir(path: str) -> str:
    """``path`` or the directory that holds ``backbone.npz`` below it (a Model artifact's
    ``Format-Serving``), or a UserError."""
    for candidate in (path, os.path.join(path, files.SERVING_MODEL_DIR)):
        if os.path.isfile(os.path.join(candidate, BACKBONE_WEIGHTS)):
            return candidate
    raise UserError(
        f"{path} holds no pre-trained backbone ({BACKBONE_WEIGHTS}); point at a Pretrainer's model"
    )


def load_backbone(model: Any, path: str, teacher: TeacherConfig) -> list[str]:
    """Set every ``conv*`` layer of ``model`` from the backbone at ``path``; returns the layer names.

    A backbone of another architecture is refused by name (the teacher config it needs).
    """
    directory = backbone_dir(path)
    with open(os.path.join(directory, BACKBONE_INFO), encoding="utf-8") as f:
        info = json.load(f)
    theirs = (info["conv_filters"], info["norm"], info.get("norm_groups", LEGACY_NORM_GROUPS))
    ours = (list(teacher.conv_filters), teacher.norm, teacher.norm_groups)
    if theirs != ours:
        raise UserError(
            f"the pre-trained backbone in {directory} has teacher.conv_filters, teacher.norm and "
            f"teacher.norm_groups {theirs[0]}, {theirs[1]} and {theirs[2]}; the teacher has "
            f"{ours[0]}, {ours[1]} and {ours[2]}: pre-train again with the teacher's settings"
        )
    loaded = []
    with np.load(os.path.join(directory, BACKBONE_WEIGHTS)) as stored:
        for layer in backbone_layers(model):
            values = [stored[f"{layer.name}/{i}"] for i in range(len(layer.weights))]
            if [v.shape for v in values] != [tuple(w.shape) for w in layer.weights]:
                raise UserError(f"pre-trained backbone layer {layer.name} does not fit the teacher "
                                f"(input shape {info['input_shape']}): "
                                "retrain the Pretrainer on these examples")  # fmt: skip
            layer.set_weights(values)
            loaded.append(layer.name)
    return loaded
