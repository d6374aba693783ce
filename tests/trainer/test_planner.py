"""The communication planner (trainer/parallel/planner.py) and ``eventpipe plan-parallel``:
no TensorFlow, fast."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from repo import REPO

from contract.config import TeacherConfig
from pipeline import cli
from trainer.parallel import planner as P

pytestmark = pytest.mark.unit

PCIE = P.Hardware(device_flops=1.4e12, bandwidth=6e9, latency=10e-6, bytes_per_value=4)


def toy() -> P.ModelSpec:
    """A conv layer (100 params, 1000 FLOPs, 10 outputs per example) then an fc layer (50, 100, 5)."""
    return P.ModelSpec(
        "toy",
        (P.Layer("conv", "conv", 100, 1000.0, 10), P.Layer("fc", "fc", 50, 100.0, 5)),
    )


# Slow, latency-free hardware so the hand arithmetic is exact: 1000 FLOP/s, 100 B/s.
TOY_HW = P.Hardware(device_flops=1000.0, bandwidth=100.0, latency=0.0, bytes_per_value=4)


def test_toy_bytes_match_hand_computation():
    # N = 2, global batch 6 (3 per device), 4 bytes per value.
    data = P.plan_layout(toy(), "data", 2, 6, TOY_HW)
    # ring all-reduce 2 (N-1)/N x params x 4 bytes = (100 + 50) x 4
    assert data.gradient_bytes == pytest.approx(600)
    assert data.activation_bytes == 0

    model = P.plan_layout(toy(), "model", 2, 6, TOY_HW)
    # into fc: each device holds 5 of 10 features for all 6 examples and needs all 10: 30 values each way;
    # logits for the loss: 6 examples x 5 classes x 1/2 gathered (forward only).
    assert model.activation_bytes == pytest.approx((30 * 2 + 15) * 4)
    assert model.gradient_bytes == 0

    hybrid = P.plan_layout(toy(), "hybrid", 2, 6, TOY_HW)
    # conv data parallel (all-reduce its 100 params), features all-gathered over the batch:
    # each device has 3 examples x 10 features and needs 6 x 10.
    assert hybrid.gradient_bytes == pytest.approx(2 * 0.5 * 100 * 4)
    assert hybrid.activation_bytes == pytest.approx((30 * 2 + 15) * 4)
    assert hybrid.placements == [(2, 1), (1, 2)]


def test_toy_step_times_match_hand_computation():
    data = P.plan_layout(toy(), "data", 2, 6, TOY_HW)
    # compute: 3 x 6 examples x 1100 FLOPs / 2 devices / 1000 FLOP/s
    assert data.compute_s == pytest.approx(9.9)
    assert data.comm_s == pytest.approx(6.0)  # 600 B / 100 B/s
    assert data.step_no_overlap_s == pytest.approx(15.9)
    # overlap: fwd conv 3 s, fc 0.3 s; bwd fc 0.6 s (ends 3.9), fc all-reduce 2 s runs during bwd conv
    # (6 s, ends 9.9); the conv all-reduce (4 s) can only start then: 13.9 s.
    assert data.step_overlap_s == pytest.approx(13.9)
    assert data.speedup_no_overlap == pytest.approx(6 / 15.9 / (1000 / 3300))

    hybrid = P.plan_layout(toy(), "hybrid", 2, 6, TOY_HW)
    # 120 B forward + 120 B backward exchange, 60 B logits, 400 B conv all-reduce
    assert hybrid.comm_s == pytest.approx(7.0)
    assert hybrid.compute_s <= hybrid.step_overlap_s <= hybrid.step_no_overlap_s


def test_latency_counts_ring_messages():
    hw = dataclasses.replace(TOY_HW, latency=1.0)
    data = P.plan_layout(toy(), "data", 4, 8, hw)
    # two all-reduces over 4 devices: 2 x (4 - 1) messages each
    assert data.comm_s == pytest.approx(data.gradient_bytes / 100 + 2 * 6)


def test_data_parallel_bytes_grow_with_params_not_batch():
    model = P.alexnet_owt()
    small = P.plan_layout(model, "data", 4, 4 * 16, PCIE)
    large = P.plan_layout(model, "data", 4, 4 * 256, PCIE)
    assert small.bytes_per_device == pytest.approx(large.bytes_per_device)
    assert small.bytes_per_device == pytest.approx(2 * 3 / 4 * model.params * 4)
    doubled = P.ModelSpec(
        "x2", tuple(dataclasses.replace(layer, params=2 * layer.params) for layer in model.layers)
    )
    assert P.plan_layout(doubled, "data", 4, 64, PCIE).bytes_per_device == pytest.approx(
        2 * small.bytes_per_device
    )


def test_model_parallel_bytes_grow_with_batch_not_params():
    model = P.alexnet_owt()
    b64 = P.plan_layout(model, "model", 4, 64, PCIE)
    b256 = P.plan_layout(model, "model", 4, 256, PCIE)
    assert b64.bytes_per_device > 0
    assert b256.bytes_per_device == pytest.approx(4 * b64.bytes_per_device)
    fat = P.ModelSpec(
        "fat", tuple(dataclasses.replace(layer, params=10 * layer.params) for layer in model.layers)
    )
    assert P.plan_layout(fat, "model", 4, 64, PCIE).bytes_per_device == pytest.approx(b64.bytes_per_device)


@pytest.mark.parametrize("devices", [4, 8])
def test_hybrid_beats_data_and_model_parallel_for_alexnet_on_pcie(devices):
    plans = {
        layout: P.plan_layout(P.alexnet_owt(), layout, devices, 128 * devices, PCIE) for layout in P.LAYOUTS
    }
    hybrid, others = plans["hybrid"], [plans["data"], plans["model"]]
    for other in others:
        assert hybrid.bytes_per_device < 0.5 * other.bytes_per_device
        assert hybrid.step_no_overlap_s < other.step_no_overlap_s
        assert hybrid.speedup_no_overlap > other.speedup_no_overlap
        # with ideal overlap at 6 GB/s every layout is compute-bound: hybrid is at least as good (1%)
        assert hybrid.step_overlap_s <= other.step_overlap_s * 1.01
    # on a slower link (PCIe staged through host memory) overlap no longer hides the others' traffic
    slow = dataclasses.replace(PCIE, bandwidth=1e9)
    plans = {
        layout: P.plan_layout(P.alexnet_owt(), layout, devices, 128 * devices, slow) for layout in P.LAYOUTS
    }
    assert plans["hybrid"].step_overlap_s < min(plans["data"].step_overlap_s, plans["model"].step_overlap_s)


def test_one_device_moves_nothing_and_fast_links_scale_linearly():
    model = P.alexnet_owt()
    for layout in P.LAYOUTS:
        one = P.plan_layout(model, layout, 1, 128, PCIE)
        assert one.bytes_per_device == 0 and one.comm_s == 0
        assert one.speedup_no_overlap == pytest.approx(1.0)
        ideal = P.plan_layout(model, layout, 8, 1024, dataclasses.replace(PCIE, bandwidth=1e18, latency=0))
        assert ideal.speedup_no_overlap == pytest.approx(8.0, rel=1e-6)


def test_overlap_lies_between_compute_and_serial_time():
    teacher = P.eventpipe_teacher(4, 32, 32, 3, 4, TeacherConfig())
    for model in (P.alexnet_owt(), P.alexnet_2012(), teacher, toy()):
        for layout in P.LAYOUTS:
            for bw in (1e8, 6e9):
                plan = P.plan_layout(model, layout, 4, 64, dataclasses.replace(PCIE, bandwidth=bw))
                assert (
                    plan.compute_s * (1 - 1e-9) <= plan.step_overlap_s <= plan.step_no_overlap_s * (1 + 1e-9)
                )


def test_hybrid_2d_shards_fc_over_model_axis_and_all_reduces_over_batch_axis():
    plan = P.plan_layout(toy(), "hybrid-2d", 4, 8, TOY_HW, mesh={"batch": 2, "model": 2})
    assert plan.placements == [(4, 1), (2, 2)]
    # conv: all-reduce over 4 replicas; fc: its half shard all-reduced over the 2 batch replicas
    assert plan.gradient_bytes == pytest.approx((2 * 3 / 4 * 100 + 2 * 1 / 2 * 50 / 2) * 4)
    # into fc: each device holds 2 examples x 10 and needs its batch shard's 4 examples x 10
    assert plan.activation_bytes == pytest.approx((2 * 20 + 4 * 5 / 2) * 4)


def test_alexnet_presets_have_the_published_shapes():
    owt, original = P.alexnet_owt(), P.alexnet_2012()
    assert owt.params_of("fc") == original.params_of("fc") == 58_631_144
    assert owt.params - owt.params_of("fc") == 2_469_696  # 64-192-384-256-256 single column
    assert original.params - original.params_of("fc") == 2_334_080  # two towers, grouped convs
    assert [layer.out_elements for layer in owt.layers[:5]] == [
        27 * 27 * 64,
        13 * 13 * 192,
        13 * 13 * 384,
        13 * 13 * 256,
        6 * 6 * 256,
    ]
    assert owt.fwd_flops == pytest.approx(1.43e9, rel=0.01)  # 0.71 G multiply-adds
    assert original.fwd_flops == pytest.approx(1.45e9, rel=0.01)


@pytest.mark.parametrize(
    "geometry, overrides",
    [
        ((4, 32, 32, 3, 4), {}),
        ((3, 17, 17, 3, 5), {"conv_filters": [16, 16, 24], "fc_units": [100, 50], "blocks_per_stage": 2}),
        (
            (1, 8, 8, 1, 3),
            {"conv_filters": [8, 16], "fc_units": [64], "attention_heads": 3, "width_multiplier": 1.5},
        ),
        ((2, 12, 20, 1, 3), {"conv_filters": [8], "fc_units": [16], "stem_stride": 1}),
        ((2, 16, 16, 1, 3), {"conv_filters": [8, 16], "fc_units": [16], "pool": "avgmax"}),
    ],
)
def test_teacher_preset_counts_match_the_keras_model(geometry, overrides):
    from contract.layout import EventSpec
    from trainer.models.teacher import build_teacher, parameter_counts

    frames, height, width, channels, classes = geometry
    cfg = TeacherConfig(**overrides)
    planned = P.eventpipe_teacher(frames, height, width, channels, classes, cfg)
    spec = EventSpec([str(i) for i in range(classes)], frames, height, width, channels)
    model = build_teacher(spec, cfg)
    built = parameter_counts(model)
    assert (planned.params, planned.params_of("fc")) == (built["total"], built["fully_connected"])
    stem = planned.layers[0]  # the stem's activations: the stride the model used, small frames too
    assert stem.out_elements == frames * int(np.prod(model.get_layer("conv_stem").output.shape[1:]))
    conv_layers = 1 + len(cfg.conv_filters) * cfg.blocks_per_stage
    assert [layer.kind for layer in planned.layers] == ["conv"] * conv_layers + ["attention"] + ["fc"] * (
        len(cfg.fc_units) + 1
    )


def test_units():
    assert P.parse_bandwidth("6GB/s") == 6e9
    assert P.parse_bandwidth("600 MB/s") == 6e8
    assert P.parse_bandwidth("25Gbit/s") == pytest.approx(25e9 / 8)
    assert P.parse_bandwidth("10Gbps") == pytest.approx(10e9 / 8)
    assert P.parse_bandwidth("1GiB/s") == 2**30
    assert P.parse_bandwidth("3e9") == 3e9
    assert P.parse_flops("1.4T") == pytest.approx(1.4e12)
    assert P.parse_flops("900GFLOP/s") == pytest.approx(9e11)
    assert P.parse_duration("10us") == pytest.approx(1e-5)
    assert P.parse_duration("0.02ms") == pytest.approx(2e-5)
    for bad in ("fast", "-1GB/s", "0", "6XB/s"):
        with pytest.raises(P.PlannerError):
            P.parse_bandwidth(bad)
    assert P.measure_matmul_flops(n=128, repeats=2) > 0


def test_json_model_file(tmp_path):
    path = tmp_path / "net.json"
    path.write_text(
        json.dumps({"name": "net", "layers": [dataclasses.asdict(layer) for layer in toy().layers]})
    )
    loaded = P.load_model_json(str(path))
    assert loaded.layers == toy().layers and loaded.name == "net"
    path.write_text(
        '{"layers": [{"name": "a", "kind": "lstm", "params": 1, "fwd_flops": 1, "out_elements": 1}]}'
    )
    with pytest.raises(P.PlannerError, match="kind"):
        P.load_model_json(str(path))
    path.write_text("{not json")
    with pytest.raises(P.PlannerError, match="not valid JSON"):
        P.load_model_json(str(path))


def test_paper_comparison_reports_ratios_and_assumptions():
    result = P.compare_with_paper()
    assert [r["devices"] for r in result["rows"]] == [2, 4, 8]
    assumptions = result["assumptions"]
    assert assumptions["bandwidth"] == 6e9 and assumptions["batch_per_worker"] == 128
    assert 0.2 < assumptions["device_flops_fraction_of_k20_peak"] < 0.6
    for r in result["rows"]:
        assert r["ratio_no_overlap"] == pytest.approx(r["predicted_no_overlap"] / r["reported_speedup"])
        assert 1.0 < r["predicted_no_overlap"] <= r["predicted_overlap"] <= r["devices"] + 1e-9
        need = r["bandwidth_to_match_no_overlap"]
        hw = P.Hardware(assumptions["device_flops"], need, assumptions["latency"], 4)
        at_need = P.plan_layout(P.alexnet_owt(), "hybrid", r["devices"], 128 * r["devices"], hw)
        assert at_need.speedup_no_overlap == pytest.approx(r["reported_speedup"], rel=1e-4)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["plan-parallel", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json(capsys, tmp_path):
    out_file = tmp_path / "plan.json"
    code, out, _ = run_cli(
        capsys,
        "--model",
        "alexnet",
        "--devices",
        "1,4",
        "--device-flops",
        "1.4T",
        "--json",
        "--out",
        str(out_file),
    )
    assert code == 0
    result = json.loads(out)
    assert result == json.loads(out_file.read_text())
    assert [(p["devices"], p["layout"]) for p in result["plans"]] == [
        (1, "data"),
        (1, "model"),
        (1, "hybrid"),
        (4, "data"),
        (4, "model"),
        (4, "hybrid"),
    ]
    hybrid = result["plans"][-1]
    assert (
        hybrid["global_batch"] == 512
        and hybrid["bytes_per_device"] > 0
        and hybrid["speedup_overlap"] <= 4.0 + 1e-9
    )
    assert result["hardware"]["device_flops"] == 1.4e12
    assert result["best"]["4"]["fewest_bytes"] == "hybrid"


def test_cli_table_with_teacher_geometry_and_paper(capsys):
    code, out, _ = run_cli(
        capsys,
        "--frames", "2", "--size", "16", "--channels", "1", "--classes", "3",
        "--set", "teacher.fc_units=64", "--set", "teacher.fc_layout=2d",
        "--device-flops", "50G", "--global-batch", "64", "--devices", "2,4", "--compare-paper",
    )  # fmt: skip
    assert code == 0
    expected = P.eventpipe_teacher(2, 16, 16, 1, 3, TeacherConfig(fc_units=[64]))
    assert f"{expected.params / 1e6:.2f}M params" in out
    assert "hybrid-2d" in out  # a 2d teacher config's batch=2,model=2 mesh is planned too
    assert "AlexNet vs Krizhevsky 2014" in out
    for reported in ("1.95x", "3.74x", "6.25x"):
        assert reported in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--bandwidth", "fast"],
        ["--devices", "0"],
        ["--device-flops", "lots"],
        ["--model", "no-such-model"],
        ["--batch", "-3"],
        ["--channels", "2"],
        ["--global-batch", "10", "--devices", "4"],
        ["--batch", "8", "--global-batch", "16"],
        ["--mesh", "batch=3"],
        ["--set", "teacher.fc_units=x"],
    ],
)
def test_cli_bad_flags_give_one_line(capsys, argv):
    code, out, err = run_cli(capsys, "--device-flops", "1T", *argv)  # a later flag wins
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eventpipe plan-parallel: error:")


def test_planner_never_imports_tensorflow():
    code = (
        "import sys\n"
        "from pipeline import cli\n"
        "assert cli.main(['plan-parallel', '--model', 'alexnet', '--device-flops', '1T', '--json']) == 0\n"
        "assert 'tensorflow' not in sys.modules, 'plan-parallel imported TensorFlow'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
