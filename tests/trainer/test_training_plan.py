"""How long the teacher trains, on what input size, with what augmentation, and whether it fits."""

from __future__ import annotations

import dataclasses

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


def test_the_student_phases_follow_the_data_with_a_floor_for_small_sets():
    from contract.config import StudentConfig
    from trainer.distill.distillation import epoch_steps

    cfg = StudentConfig()
    # The demo (1,264 train + 400 unlabelled events) is above the floor: one pass per epoch.
    assert epoch_steps(1664, cfg) == 52
    # A small set gets 50 steps per epoch: 1,000 dense, 200 pruning, 100 QAT steps. The floor
    # must not fall when the dense epochs grow, or the pruning and QAT phases would shrink.
    assert epoch_steps(600, cfg) == 50
    assert epoch_steps(600, cfg) * cfg.prune_epochs == 200
    assert epoch_steps(600, cfg) * cfg.qat_epochs == 100
    assert epoch_steps(600, StudentConfig(epochs=10, min_steps=1000)) == 100


def test_patience_stops_once_the_eval_loss_stops_improving():
    from trainer.teacher.length import patience_exhausted

    cfg = TeacherConfig(patience=2, min_steps=20, warmup_steps=0, decay_start=0.0)  # annealed from step 30
    evals = [{"step": 10 * i, "loss": loss} for i, loss in enumerate([1.0, 0.8, 0.7, 0.75, 0.71], start=1)]
    assert patience_exhausted(cfg, evals, 50, 60)  # two checks since the best (0.7 at step 30)
    assert not patience_exhausted(cfg, evals[:4], 40, 60)  # one check since the best
    assert not patience_exhausted(cfg, evals[:4] + [{"step": 50, "loss": 0.69}], 50, 60)  # a new best
    assert not patience_exhausted(dataclasses.replace(cfg, min_steps=60), evals, 50, 60)  # min_steps first
    assert not patience_exhausted(dataclasses.replace(cfg, patience=0), evals, 50, 60)  # 0: never stops early
    assert not patience_exhausted(dataclasses.replace(cfg, steps=60), evals, 50, 60)  # fixed length
    assert not patience_exhausted(cfg, evals, 50, 50)  # at its planned end a run has not stopped early


def test_patience_counts_only_checks_in_the_second_half_of_the_decay():
    """The 24-epoch digits teacher's trajectory (docs/benchmarks.md, "Teacher: patience while
    annealing"): its lowest eval loss came at the held rate, and only annealing checks may end it."""
    from trainer.teacher.length import annealed_from, patience_exhausted
    from trainer.teacher.loop import make_schedule

    cfg = TeacherConfig(patience=4, min_steps=200, warmup_steps=30, decay_start=0.25)
    steps = 1061
    assert annealed_from(cfg, steps) == pytest.approx(265.25 + (1061 - 265.25) / 2)
    schedule = make_schedule(cfg, steps)
    peak = float(schedule(30))
    # At the midpoint the cosine is half way from the peak to its floor.
    half = peak * (cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) / 2)
    assert float(schedule(int(annealed_from(cfg, steps)))) == pytest.approx(half, rel=1e-2)
    # A warm-up longer than decay_start of the run moves the decay, and the midpoint, with it.
    assert annealed_from(TeacherConfig(warmup_steps=150, decay_start=0.25), 200) == 175
    assert annealed_from(TeacherConfig(warmup_steps=300), 200) == 300  # past the end: never stops early

    losses = [0.52, 0.36, 0.24, 0.20, 0.19, 0.18, 0.139, 0.143, 0.178, 0.159, 0.162, 0.140, 0.144, 0.141,
              0.142]  # fmt: skip
    evals = [{"step": 45 * i, "loss": loss} for i, loss in enumerate(losses, start=4)]  # steps 180-810
    upto = {e["step"]: evals[: i + 1] for i, e in enumerate(evals)}
    assert not patience_exhausted(cfg, upto[630], 630, steps)  # 4 checks since 450, at a high rate
    assert not patience_exhausted(cfg, upto[765], 765, steps)  # 630 is still before step 663
    assert patience_exhausted(cfg, upto[810], 810, steps)  # 675, 720, 765 and 810: all annealing
    assert not patience_exhausted(cfg, upto[765] + [{"step": 810, "loss": 0.1}], 810, steps)  # a new best
    at_midpoint = dataclasses.replace(cfg, decay_start=(675 - (1061 - 675)) / 1061)  # annealed from 675
    assert annealed_from(at_midpoint, steps) == pytest.approx(675)
    assert patience_exhausted(at_midpoint, upto[810], 810, steps)  # a check at the midpoint counts


def test_a_checkpoint_from_before_a_resume_key_existed_resumes_with_that_keys_old_value():
    from trainer.teacher.loop import RESUME_KEYS, _changed_fields

    legacy = {k: getattr(TeacherConfig(), k) for k in RESUME_KEYS if k not in ("norm", "norm_groups", "pool")}
    assert _changed_fields(legacy, TeacherConfig(norm_groups=8)) == []
    assert _changed_fields(legacy, TeacherConfig(norm_groups=32)) == ["norm_groups"]
    assert _changed_fields({**legacy, "seed": 5}, TeacherConfig(norm_groups=8)) == ["seed"]


def test_group_norm_normalises_each_group_of_each_frame_and_the_teacher_takes_its_count():
    import tensorflow as tf

    from trainer.models.teacher import GroupNorm, build_teacher

    x = tf.random.stateless_normal([2, 5, 5, 64], seed=[1, 2]) * tf.range(1.0, 65.0) + tf.range(64.0)
    layer = GroupNorm(groups=32)
    y = layer(x).numpy().reshape(2, 25, 32, 2)  # gamma 1, beta 0: [events, pixels, groups, channels]
    assert layer.group_count == 32
    np.testing.assert_allclose(y.mean(axis=(1, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(axis=(1, 3)), 1.0, atol=1e-3)
    odd = GroupNorm(groups=32)
    odd(tf.zeros([1, 2, 2, 24]))
    assert odd.group_count == 24  # at most one group per channel

    spec = EventSpec(classes=("a", "b"), frames=2, height=16, width=16, channels=1)
    teacher = build_teacher(spec, TeacherConfig(conv_filters=[8, 16], fc_units=[8], norm_groups=4))
    counts = {layer.name: layer.group_count for layer in teacher.layers if isinstance(layer, GroupNorm)}
    assert counts and set(counts.values()) == {4}, counts


def test_frame_loss_trains_attention_toward_the_known_best_frame_only():
    import tensorflow as tf

    from trainer.losses import frame_cross_entropy

    weights = tf.constant([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25], [0.1, 0.1, 0.1, 0.7]])
    loss = frame_cross_entropy(tf.constant([0, 2, -1]), weights).numpy()
    assert loss == pytest.approx([-np.log(0.7), -np.log(0.25), 0.0], rel=1e-5)  # unknown (-1) counts zero


def test_ranking_loss_wants_earlier_frames_below_and_lets_later_ones_tie():
    import tensorflow as tf

    from trainer.losses import frame_ranking_loss

    tilt, margin = 0.5, 1.0

    def weights(*scores):  # what the student outputs: softmax of the tilted scores
        s = np.array(scores, np.float64) - tilt * np.arange(len(scores))
        return np.exp(s) / np.exp(s).sum()

    w = tf.constant(
        np.stack(
            [
                weights(0.0, 2.0, 2.0, 2.0),  # best 1: frame 0 is 2 below (ok), 2 and 3 tie (ok)
                weights(0.0, 0.5, 0.0, 0.0),  # best 1: frame 0 only 0.5 below -> 0.5 short of the margin
                weights(0.0, 0.0, 1.0, 0.0),  # best 0: frame 2 is 1 above, 0.75 more than a tie allows
                weights(5.0, 0.0, 0.0, 0.0),  # unknown best frame: counts zero
            ]
        ),
        tf.float32,
    )
    loss = frame_ranking_loss(tf.constant([1, 1, 0, -1]), w, margin, tilt).numpy()
    assert loss == pytest.approx([0.0, 0.5, 0.75, 0.0], abs=1e-4)


def test_a_met_ranking_loss_names_the_best_frame_when_the_tilt_allows_it():
    """With ``margin / 4 <= tilt <= margin / (K - 1)`` a met loss means the argmax is the best frame;
    the default tilt (0.5, above that with four frames) trades that for a stronger prior on the
    earliest frame, which named more best frames on held-out events."""
    import tensorflow as tf

    from trainer.losses import frame_ranking_loss

    rng = np.random.default_rng(0)
    scores = rng.normal(0.0, 3.0, size=(4000, 4))
    best = rng.integers(0, 4, size=4000)
    for tilt, always in ((0.25, True), (1.0 / 3.0, True), (0.5, False)):
        tilted = scores - tilt * np.arange(4)
        w = np.exp(tilted) / np.exp(tilted).sum(axis=1, keepdims=True)
        met = frame_ranking_loss(tf.constant(best), tf.constant(w, tf.float32), 1.0, tilt).numpy() == 0
        assert met.sum() > 100
        assert np.all(np.argmax(w[met], axis=1) == best[met]) == always


def test_frame_order_names_the_earliest_of_frames_that_score_alike():
    import tensorflow as tf

    from trainer.models.student import FrameOrder

    order = FrameOrder(0.5)
    tilted = order(tf.constant([[1.0, 3.0, 3.0, 3.0], [1.0, 1.2, 1.9, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert np.argmax(tilted.numpy(), axis=-1).tolist() == [1, 0, 0]  # 1.9 is not 0.5 a frame above
    assert FrameOrder.from_config(order.get_config()).tilt == 0.5


def test_teacher_loss_adds_the_frame_term_and_smooths_labels():
    import tensorflow as tf

    from trainer.parallel.strategies import event_loss, teacher_loss

    logits = tf.constant([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = tf.constant([0, -1])  # the second event is unlabelled: no class term
    out = {"logits": logits, "frame_weights": tf.constant([[0.5, 0.5], [0.9, 0.1]])}
    plain = float(event_loss(labels, logits, 2))
    smooth = float(event_loss(labels, logits, 2, label_smoothing=0.1))
    assert plain == pytest.approx(-np.log(np.exp(2) / (np.exp(2) + 2)) / 2, rel=1e-5)
    assert smooth > plain  # a confident right answer costs more against a smoothed target
    cfg = TeacherConfig(global_batch_size=2, label_smoothing=0.0, frame_loss_weight=0.5)
    total = float(teacher_loss(labels, tf.constant([1, 0]), out, cfg))
    assert total == pytest.approx(plain + 0.5 * (-np.log(0.5) - np.log(0.9)) / 2, rel=1e-5)


def test_schedule_warms_up_then_decays_to_the_final_fraction():
    from trainer.teacher.loop import make_schedule

    cfg = TeacherConfig(base_learning_rate=1e-3, global_batch_size=64, reference_batch_size=32,
                        warmup_steps=10, decay_start=0.5)  # fmt: skip
    schedule = make_schedule(cfg, 110)
    lrs = schedule(np.arange(111)).numpy()
    assert lrs[0] == pytest.approx(1e-3) and lrs[10] == pytest.approx(2e-3)  # linear scaling: 2x
    assert np.all(np.diff(lrs[:11]) > 0)
    assert lrs[10:56] == pytest.approx([2e-3] * 46)  # held to half the run
    assert np.all(np.diff(lrs[55:]) < 0)
    assert lrs[110] == pytest.approx(2e-3 * cfg.final_lr_fraction)


def test_augmentation_is_a_function_of_the_event_position_only():
    import tensorflow as tf

    from trainer.data import augment_events

    rng = np.random.default_rng(0)
    frames = tf.constant(rng.random((6, 3, 16, 16, 1)), tf.float32)
    positions = tf.range(100, 106, dtype=tf.int64)
    whole = augment_events(frames, positions, seed=7).numpy()
    # The same events split into other batches (another strategy's per-replica slices) agree.
    halves = np.concatenate(
        [augment_events(frames[:2], positions[:2], 7), augment_events(frames[2:], positions[2:], 7)]
    )
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
    [
        ((32, 32), 16384, (32, 32)),
        ((480, 640), 16384, (110, 147)),
        ((288, 384), 16384, (110, 147)),
        ((8, 8), 16, (4, 4)),
    ],
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
    vga = EventSpec(("a", "b", "c", "d", "e"), 4, 480, 640, 1)
    small = EventSpec(("a", "b", "c", "d", "e"), 4, 110, 147, 1)
    big = estimate(build_teacher(vga, cfg), vga, cfg, weight_copies=4)
    fits = estimate(build_teacher(small, cfg), small, cfg, weight_copies=4)
    # VGA frames at their source resolution cannot train on a 24 GB machine; the budgeted size can.
    assert big["total_bytes"] > 20 * 2**30
    assert fits["total_bytes"] < 8 * 2**30
    with pytest.raises(UserError) as info:
        check_fits(build_teacher(vga, cfg), vga, cfg, weight_copies=4, available=24 * 2**30)
    message = str(info.value)
    for needle in ("teacher.global_batch_size", "data.max_input_pixels", "480x640", "GiB", "would fit"):
        assert needle in message
    assert check_fits(build_teacher(small, cfg), small, cfg, weight_copies=4, available=24 * 2**30)[
        "total_bytes"
    ]


def test_dtensor_clients_must_fill_the_mesh_before_any_process_starts(tmp_path):
    from contract.config import Config
    from trainer.parallel import launch

    cfg = Config()
    cfg.teacher.strategy, cfg.teacher.clients, cfg.teacher.logical_devices = (
        "hybrid",
        2,
        4,
    )  # 8 devices, mesh 4
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
