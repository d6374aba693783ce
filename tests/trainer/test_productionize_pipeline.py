"""The productionize chain on small generated data: Distiller run_fn -> LiteConverter executor.

One module fixture builds it all once (stand-in teacher, distilled + pruned student, int8 and
float16 TFLite); the tests then check the artifacts, that the int8 model runs where TensorFlow
cannot be imported, that the parity gate blocks a broken model, and that latency is measured.
"""

import json
import os
import subprocess
import sys

import numpy as np
import productionize_fixtures as fx
import pytest
from repo import REPO

from contract import layout
from contract.config import Config, LiteConfig, section_json
from contract.layout import EventSpec

pytestmark = pytest.mark.e2e

SPEC = EventSpec(fx.CLASSES, frames=2, height=12, width=12, channels=3)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from tfx.components.trainer.fn_args_utils import FnArgs
    from tfx.types import standard_artifacts

    from components.artifacts import LiteModels
    from components.lite_converter.component import LiteConverter
    from contract import files
    from trainer.distill import entry as distiller_entry

    root = tmp_path_factory.mktemp("productionize")
    examples = fx.write_examples(str(root / "examples"), SPEC, {"train": 96, "eval": 60, "unlabelled": 32})
    teacher_dir = fx.train_stand_in_teacher(
        examples, SPEC, str(root / "teacher" / "Format-Serving"), epochs=4
    )

    cfg = Config()
    for key, value in {
        "filters": [32, 64], "head_units": 32, "blocks_per_stage": 1, "epochs": 3, "prune_epochs": 2,
        "batch_size": 16, "learning_rate": 3e-3, "prune_learning_rate": 1e-3, "min_steps": 0,
        # A 75%-sparse model: the QAT-against-PTQ comparison below is about a heavily pruned one.
        "target_sparsity": 0.75,
    }.items():  # fmt: skip
        cfg.set(f"student.{key}", value)
    student_dir = root / "student"
    distiller_entry.run_fn(
        FnArgs(
            train_files=[os.path.join(layout.split_dir(examples, layout.TRAIN), "*")],
            eval_files=[os.path.join(layout.split_dir(examples, layout.EVAL), "*")],
            serving_model_dir=str(student_dir / "Format-Serving"),
            model_run_dir=str(root / "student_run"),
            base_model=teacher_dir,
            custom_config={"config": cfg.to_dict()},
        )
    )

    def artifact(cls, uri):
        a = cls()
        a.uri = str(uri)
        return a

    lite = artifact(LiteModels, root / "lite")
    os.makedirs(lite.uri, exist_ok=True)
    LiteConverter.EXECUTOR_SPEC.executor_class().Do(
        {
            "model": [artifact(standard_artifacts.Model, student_dir)],
            "examples": [artifact(standard_artifacts.Examples, examples)],
            "teacher_model": [artifact(standard_artifacts.Model, root / "teacher")],
        },
        {"lite": [lite]},
        {"lite_config": section_json(LiteConfig(representative_examples=48, measure_latency=False))},
    )
    with open(os.path.join(lite.uri, "lite_report.json")) as f:
        report = json.load(f)
    with open(student_dir / files.DISTILL_REPORT) as f:
        distill_report = json.load(f)
    return {
        "root": root, "examples": examples, "teacher": teacher_dir, "student": str(student_dir),
        "lite": lite, "report": report, "distill": distill_report, "cfg": cfg,
    }  # fmt: skip


def test_distiller_writes_students_with_the_serving_contract(chain):
    import tensorflow as tf

    distill = chain["distill"]
    assert distill["examples"] == {"labelled": 96, "unlabelled": 32}
    assert distill["pruning"]["sparsity"]["total"] == pytest.approx(0.75, abs=0.01)
    assert set(distill["eval"]) >= {"teacher", "student_float", "student_pruned"}
    assert distill["history"]["dense"]["loss"][-1] < distill["history"]["dense"]["loss"][0]
    logs = chain["root"] / "student_run" / "tensorboard"  # one TensorBoard run per phase
    assert sorted(os.listdir(logs)) == ["dense", "pruning", "qat", "scratch"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(logs / "dense" / "train"))
    for sub in ("Format-Serving", "student_float"):
        loaded = tf.saved_model.load(os.path.join(chain["student"], sub))
        assert set(loaded.signatures) == {"serving_default", layout.DECODED_SIGNATURE, "serving_examples"}
    serving = tf.saved_model.load(os.path.join(chain["student"], "Format-Serving"))
    encoded = [fx.encoded_event(SPEC, label=1, seed=3)]
    out = serving.signatures["serving_default"](frames=tf.constant(encoded))
    assert out[layout.OUT_CLASS].numpy()[0].decode() in SPEC.classes
    assert 0 <= int(out[layout.OUT_BEST_FRAME].numpy()[0]) < SPEC.frames
    np.testing.assert_allclose(out[layout.OUT_PROBABILITIES].numpy().sum(), 1.0, rtol=1e-5)


def test_lite_converter_report_and_files(chain):
    report, lite = chain["report"], chain["lite"]
    for name in (
        "model.tflite",
        "model_float16.tflite",
        "metadata.json",
        "variants.png",
        "confusion_int8.png",
    ):
        assert os.path.getsize(os.path.join(lite.uri, name)) > 0, name
    with open(os.path.join(lite.uri, "variants.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for section in ("teacher", "student", "tflite", "comparison", "parity"):
        assert report[section], section
    for entry in (report["teacher"], report["student"]["float"], report["student"]["pruned"],
                  report["tflite"]["int8"], report["tflite"]["float16"]):  # fmt: skip
        assert 0.0 <= entry["accuracy"] <= 1.0
        assert entry["bytes"]["raw"] > entry["bytes"]["gzipped"] > 0
        assert entry["params"] > 0 and entry["flops_per_event"] > 0
    assert report["student"]["pruned"]["sparsity"]["total"] == pytest.approx(0.75, abs=0.01)
    int8 = report["tflite"]["int8"]
    # One byte per (mostly sparse-encoded) weight: under a quarter of the float student's Keras file.
    assert int8["bytes"]["raw"] < report["student"]["float"]["keras_bytes"]["raw"] / 4
    parity = report["parity"]
    # Agreement needs no label: every ingested event counts (96 train + 32 unlabelled + 60 eval).
    assert (parity["events"], parity["eval_events"]) == (188, 60)
    assert 0 <= parity["eval_agreement"] <= 1
    assert parity["blessed"] == (parity["agreement"] >= parity["min_agreement"])
    assert lite.get_int_custom_property("blessed") == int(parity["blessed"])
    assert lite.get_float_custom_property("agreement") == pytest.approx(parity["agreement"])
    assert report["tflite"]["confusion_matrix"]["classes"] == list(SPEC.classes)
    assert report["tflite"]["runtime"]["name"] == "ai-edge-litert"  # what parity ran on
    with open(os.path.join(lite.uri, "metadata.json"), encoding="utf-8") as f:
        metadata = json.load(f)
    assert metadata["labels"] == list(SPEC.classes) and metadata["variant"] == "int8"
    assert sum(map(sum, report["tflite"]["confusion_matrix"]["matrix"])) == 60


def test_int8_model_runs_on_litert_without_tensorflow(chain, tmp_path):
    from contract.files import STUDENT_QAT, DistillerOutput
    from trainer.models.student import load_keras

    frames = np.stack([fx.render_event(np.random.default_rng(i), i % 3, SPEC) for i in range(12)])
    np.save(tmp_path / "frames.npy", frames)
    script = f"""
import json, sys
sys.modules["tensorflow"] = None  # any import of TensorFlow now raises ImportError
import numpy as np
from ondevice.runtime import LiteEventClassifier, interpreter_class, lite_runtime
try:
    import tensorflow  # noqa: F401
    tf_importable = True
except ImportError:
    tf_importable = False
clf = LiteEventClassifier({os.path.join(chain["lite"].uri, "model.tflite")!r})
pixels = np.load({str(tmp_path / "frames.npy")!r})
out = [clf.classify(event.astype(np.float32) / 255.0) for event in pixels]
raw = [int(np.argmax(clf.invoke(clf.prepare_pixels(event))[0])) for event in pixels]
print(json.dumps({{
    "tf_importable": tf_importable,
    "interpreter": interpreter_class().__module__,
    "runtime": lite_runtime().describe(), "clf_runtime": clf.runtime.describe(),
    "input_dtype": str(clf.input_dtype),
    "quantization": clf.metadata["input"]["quantization"],
    "class_ids": [o["class_id"] for o in out], "raw_ids": raw,
    "names": [o["class_name"] for o in out], "best": [o["best_frame"] for o in out],
}}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": REPO})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tf_importable"] is False
    assert result["interpreter"] == "ai_edge_litert.interpreter"
    assert (
        result["runtime"]
        == result["clf_runtime"]
        == {"name": "ai-edge-litert", "version": "1.4.0", "module": "ai_edge_litert.interpreter"}
    )
    assert result["input_dtype"] == "int8"
    # The representative set pins the input range to [0, 1]: int8 input = pixel - 128.
    assert result["quantization"]["scale"] == pytest.approx(1 / 255, rel=1e-4)
    assert result["quantization"]["zero_point"] == -128
    assert result["class_ids"] == result["raw_ids"]
    assert all(n in SPEC.classes for n in result["names"]) and all(
        0 <= b < SPEC.frames for b in result["best"]
    )
    # Same events through the float student it was converted from: the int8 model mostly agrees.
    model = load_keras(
        DistillerOutput(chain["student"]).keras(STUDENT_QAT)
    )  # the float twin int8 was converted from
    reference = np.argmax(model(frames.astype(np.float32) / 255.0, training=False)["logits"].numpy(), axis=-1)
    assert np.mean(reference == np.array(result["class_ids"])) >= 0.75


def test_parity_gate_blocks_a_deliberately_broken_model(chain):
    from contract.files import STUDENT_PRUNED, DistillerOutput
    from contract.layout import split_files
    from trainer.evaluate import keras_predictor, predict_split, tflite_predictor
    from trainer.lite import tflite
    from trainer.models.student import load_keras

    model = load_keras(DistillerOutput(chain["student"]).keras(STUDENT_PRUNED))
    broken = load_keras(DistillerOutput(chain["student"]).keras(STUDENT_PRUNED))
    kernel, bias = broken.get_layer("logits").get_weights()
    broken.get_layer("logits").set_weights([kernel[:, ::-1], bias[::-1]])  # classes swapped around
    representative = tflite.representative_events(split_files(chain["examples"], "train"), SPEC, 16)
    bad = tflite.convert_variant(broken, SPEC, "int8", representative=representative, try_sparse=False)
    preds = predict_split(
        split_files(chain["examples"], "eval"), SPEC,
        {"float": keras_predictor(model), "int8": tflite_predictor(bad.content)},
    )  # fmt: skip
    result = tflite.parity(preds["float"].predicted, preds["int8"].predicted, 0.99)
    assert not result.blessed
    assert result.agreement < 0.9 and result.disagreements > 6
    # The real conversion, checked the same way by the LiteConverter, agrees far better.
    assert chain["report"]["parity"]["agreement"] > result.agreement + 0.2


def test_latency_measurement_is_sane(chain):
    from trainer.lite import measure

    lite_result = measure.latency(
        "tflite", os.path.join(chain["lite"].uri, "model.tflite"), runs=30, warmup=3
    )
    assert lite_result["tensorflow_imported"] is False
    assert lite_result["runtime"]["name"] == "ai-edge-litert"  # the on-device default, never tf.lite
    pinned = measure.latencies(
        {"old": ("tflite", os.path.join(chain["lite"].uri, "model.tflite"), "tflite-runtime")},
        runs=5,
        warmup=1,
    )["old"]
    assert pinned["runtime"] == {
        "name": "tflite-runtime",
        "version": "2.14.0",
        "module": "tflite_runtime.interpreter",
    }
    saved = measure.latency("savedmodel", os.path.join(chain["student"], "Format-Serving"), runs=15, warmup=3)
    for result in (lite_result, saved):
        assert 0 < result["p50_ms"] <= result["p99_ms"] < 1000
    assert lite_result["runs"] == 30 and saved["runs"] == 15
    with pytest.raises(RuntimeError, match="failed"):
        measure.latency("tflite", os.path.join(chain["student"], "distill_report.json"), runs=2, warmup=0)


def test_scratch_baseline_and_kd_gain_are_reported(chain):
    report, distill = chain["report"], chain["distill"]
    scratch = report["student"]["scratch"]
    assert 0.0 <= scratch["accuracy"] <= 1.0 and scratch["params"] == report["student"]["float"]["params"]
    # Same optimizer steps as the dense distillation, on the 96 labelled events only, hard labels only.
    assert distill["scratch"] == {"labelled_events": 96, "steps": distill["steps_per_epoch"] * 3}
    assert len(distill["history"]["scratch"]["loss"]) == 3
    expected = 100 * (report["student"]["float"]["accuracy"] - scratch["accuracy"])
    assert report["comparison"]["kd_gain"] == pytest.approx(expected)


def test_qat_keeps_the_pruned_sparsity_and_lifts_int8_agreement(chain):
    from contract.files import STUDENT_PRUNED, STUDENT_QAT, DistillerOutput
    from contract.layout import split_files
    from trainer.distill.qat import trained_student
    from trainer.evaluate import keras_predictor, predict_split, tflite_predictor
    from trainer.lite import tflite
    from trainer.models.student import load_keras

    report, distill = chain["report"], chain["distill"]
    assert report["student"]["production"] == report["tflite"]["reference"] == "student_qat"
    sparsity = distill["qat"]["sparsity"]
    assert distill["qat"]["preserve_sparsity"] is True
    assert sparsity["before"] == pytest.approx(0.75, abs=0.01)
    assert sparsity["after"] == pytest.approx(sparsity["before"], abs=1e-6)  # PQAT kept every zero

    pruned = load_keras(DistillerOutput(chain["student"]).keras(STUDENT_PRUNED))
    quantized = trained_student(
        DistillerOutput(chain["student"])
    )  # float32 with the int8 rounding simulated: what serves
    # The same pruned model converted without QAT (post-training quantization only).
    representative = tflite.representative_events(split_files(chain["examples"], "train"), SPEC, 48)
    ptq = tflite.convert_variant(pruned, SPEC, "int8", representative=representative)
    with open(os.path.join(chain["lite"].uri, "model.tflite"), "rb") as f:
        qat_int8 = f.read()
    preds = predict_split(
        split_files(chain["examples"], "eval") + split_files(chain["examples"], "train"), SPEC,
        {"pruned": keras_predictor(pruned), "ptq": tflite_predictor(ptq.content),
         "qat_model": keras_predictor(quantized), "qat": tflite_predictor(qat_int8)},
    )  # fmt: skip

    def logit_error(lite_name: str, float_name: str) -> float:
        """Mean int8 logit error relative to the float model's logit scale (the two float models'
        scales differ: QAT's fine-tune sharpens the logits)."""
        reference = preds[float_name].logits
        return float(np.mean(np.abs(preds[lite_name].logits - reference)) / np.mean(np.abs(reference)))

    # Each int8 model against the float model it was converted from: QAT's is closer.
    assert preds["qat"].agreement(preds["qat_model"]) >= preds["ptq"].agreement(preds["pruned"])
    assert logit_error("qat", "qat_model") < logit_error("ptq", "pruned")
    # float16 is converted from the same weights without rounding and checked against them.
    float16 = report["tflite"]["parity_float16"]
    assert float16["reference"] == "student_qat_unrounded"
    assert (float16["events"], float16["eval_events"]) == (188, 60) and float16["agreement"] >= 0.95
    assert report["tflite"]["float16"]["parity"] == float16
    assert (
        load_keras(DistillerOutput(chain["student"]).keras(STUDENT_QAT)).count_params()
        == pruned.count_params()
    )
