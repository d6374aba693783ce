"""How long the teacher trains, on what input size, with what augmentation, and whether it fits."""

from __future__ import annotations

import numpy as np
import pytest

from components.event_example_gen.beam_graph import event_spec_from, fit_pixel_budget
from contract.config import DataConfig, TeacherConfig
from contract.errors import UserError
from contract.layout import EventSpec

pytestmark = pytest.mark.unit


def test_training_length_follows_the_data():
    from trainer.teacher.loop import total_steps

    cfg = TeacherConfig(epochs=12, min_steps=300, global_batch_size=32)
    assert total_steps(cfg, 1264) == 474  # ceil(12 * 1264 / 32)
    assert total_steps(cfg, 160) == 300  # a small set still gets min_steps
    assert total_steps(cfg, 50_000) == 18_750
    cfg.steps = 40
    assert total_steps(cfg, 50_000) == 40  # the override wins


def test_schedule_warms_up_then_decays_to_the_final_fraction():
    from trainer.teacher.loop import make_schedule

    cfg = TeacherConfig(base_learning_rate=1e-3, global_batch_size=64, reference_batch_size=32, warmup_steps=10,
                        decay_start=0.5)  # fmt: skip
    schedule = make_schedule(cfg, 110)
    lrs = schedule(np.arange(111)).numpy()
    assert lrs[0] == pytest.approx(1e-3) and lrs[10] == pytest.approx(2e-3)  # linear scaling: 2x
    assert np.all(np.diff(lrs[:11]) > 0)
    assert lrs[10:56] == pytest.approx([2e-3] * 46)  # held to half the run
    assert np.all(np.diff(lrs[55:]) < 0)
    assert lrs[110] == pytest.approx(2e-3 * cfg.final_lr_fraction)


def test_augmentation_is_a_function_of_the_event_position_only():
    import tensorflow as tf

    from trainer.teacher.data import augment_events

    rng = np.random.default_rng(0)
    frames = tf.constant(rng.random((6, 3, 16, 16, 1)), tf.float32)
    positions = tf.range(100, 106, dtype=tf.int64)
    whole = augment_events(frames, positions, seed=7).numpy()
    # The same events split into other batches (another strategy's per-replica slices) agree.
    halves = np.concatenate([augment_events(frames[:2], positions[:2], 7), augment_events(frames[2:], positions[2:], 7)])
    np.testing.assert_array_equal(whole, halves)
    assert whole.min() >= 0.0 and whole.max() <= 1.0 and whole.shape == (6, 3, 16, 16, 1)
    assert not np.allclose(whole, frames.numpy())
    other_epoch = augment_events(frames, positions + 1000, seed=7).numpy()
    assert not np.allclose(whole, other_epoch)
    # One draw per event: identical frames stay identical (motion between frames is the signal).
    still = tf.repeat(frames[:, :1], 3, axis=1)
    augmented = augment_events(still, positions, seed=7).numpy()
    np.testing.assert_array_equal(augmented[:, 0], augmented[:, 2])


@pytest.mark.parametrize(
    "size, budget, expected",
    [((32, 32), 16384, (32, 32)), ((480, 640), 16384, (110, 147)), ((288, 384), 16384, (110, 147)), ((8, 8), 16, (4, 4))],
)
def test_pixel_budget_keeps_the_aspect_ratio(size, budget, expected):
    got = fit_pixel_budget(*size, budget)
    assert got == expected and got[0] * got[1] <= budget


def test_event_spec_from_data_applies_the_budget_unless_a_size_is_configured():
    summary = {
        "size_histogram": {"288x384": 200, "480x640": 90},
        "frames_histogram": {"4": 290},
        "channels_histogram": {"1": 290},
        "classes": ["a", "b"],
    }
    spec = event_spec_from(summary, DataConfig())
    assert (spec.height, spec.width, spec.frames, spec.channels) == (110, 147, 4, 1)
    assert event_spec_from(summary, DataConfig(height=288, width=384)).height == 288
    assert event_spec_from(summary, DataConfig(max_input_pixels=10**6)).width == 384


def test_a_plan_that_cannot_fit_is_a_clear_error_naming_what_to_lower():
    from trainer.models.teacher import build_teacher
    from trainer.teacher.memory import check_fits, estimate

    cfg = TeacherConfig()
    vga = EventSpec(("a", "b", "c", "d", "e"), 4, 288, 384, 1)
    small = EventSpec(("a", "b", "c", "d", "e"), 4, 110, 147, 1)
    big = estimate(build_teacher(vga, cfg), vga, cfg, weight_copies=4)
    fits = estimate(build_teacher(small, cfg), small, cfg, weight_copies=4)
    # The source resolution was the 23 GB OOM kill on a 24 GB machine; the budgeted size is not.
    assert big["total_bytes"] > 20 * 2**30
    assert fits["total_bytes"] < 8 * 2**30
    with pytest.raises(UserError) as info:
        check_fits(build_teacher(vga, cfg), vga, cfg, weight_copies=4, available=24 * 2**30)
    message = str(info.value)
    for needle in ("teacher.global_batch_size", "data.max_input_pixels", "288x384", "GiB", "would fit"):
        assert needle in message
    assert check_fits(build_teacher(small, cfg), small, cfg, weight_copies=4, available=24 * 2**30)["total_bytes"]


def test_dtensor_clients_must_fill_the_mesh_before_any_process_starts(tmp_path):
    from contract.config import Config
    from trainer.parallel import launch

    cfg = Config()
    cfg.teacher.strategy, cfg.teacher.clients, cfg.teacher.logical_devices = "hybrid", 2, 4  # 8 devices, mesh 4
    with pytest.raises(UserError, match=r"needs 4 devices but 2 DTensor clients x 4 logical devices give 8; "
                                        r"pass --logical-devices 2"):  # fmt: skip
        launch.train(cfg, str(tmp_path / "examples"), str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()  # refused before preparing or starting anything
    cfg.teacher.clients = 3
    with pytest.raises(UserError, match=r"give 12$"):  # no --logical-devices fills 4 over 3 clients
        launch.check_client_mesh(cfg)


def test_dtensor_clients_environment_and_an_operators_jobs_are_honoured(monkeypatch):
    from contract.config import Config
    from trainer.parallel import launch

    cluster = launch.local_cluster(2)
    assert launch.dtensor_env(cluster, 1) == {
        "DTENSOR_JOBS": ",".join(cluster), "DTENSOR_CLIENT_ID": "1", "DTENSOR_NUM_CLIENTS": "2",
        "DTENSOR_JOB_NAME": "worker",
    }  # fmt: skip
    cfg = Config()
    cfg.teacher.strategy, cfg.teacher.clients = "hybrid", 2
    monkeypatch.delenv("DTENSOR_JOBS", raising=False)
    assert launch.starts_dtensor_clients(cfg)
    cfg.teacher.strategy = "single"
    assert not launch.starts_dtensor_clients(cfg)
    cfg.teacher.strategy = "hybrid"
    monkeypatch.setenv("DTENSOR_JOBS", "host-a:9000,host-b:9000")  # this process is one client of that job
    assert not launch.starts_dtensor_clients(cfg)
