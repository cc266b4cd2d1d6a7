"""XR0Policy at the boundary: 14 ↔ 32 layout, relative joints, prefix handling, timing, bad input."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.xr0.conftest import T, make_images, with_config
from xr0.boundary import PolicyObservation
from xr0.flow import sample_actions
from xr0.policy import XR0_INDEX, XR0Policy, XR0PolicyConfig, from_xr0, observation_seed, to_xr0
from xr0.processor import XR0Processor

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


@pytest.fixture(scope="module")
def policy(model, processor):
    return XR0Policy(model, processor, XR0PolicyConfig(seed=None))


def observation(seed: int = 0, t_ns: int = 123) -> PolicyObservation:
    rng = np.random.default_rng(seed)
    images = dict(zip(CAMERAS, make_images(seed), strict=True))
    state = rng.normal(0, 0.5, 14)
    state[[6, 13]] = rng.uniform(0, 1, 2)
    return PolicyObservation(images=images, state=state, instruction="transfer the cube", t_ns=t_ns)


def test_layout_places_the_arms_like_the_official_compose_state():
    v = np.arange(1.0, 15.0)
    x = to_xr0(v)
    assert x[6] == 7 and list(x[7:13]) == [1, 2, 3, 4, 5, 6]  # left gripper, left joints
    assert x[20] == 14 and list(x[21:27]) == [8, 9, 10, 11, 12, 13]  # right gripper, right joints
    assert np.count_nonzero(x) == 14 and np.array_equal(from_xr0(x), v)


def test_spec(policy):
    assert policy.spec.cameras == CAMERAS and policy.spec.chunk_length == T
    assert policy.spec.max_prefix == 6 and policy.spec.state_dim == 14 and policy.spec.robot_type == "aloha"


def test_chunk_matches_the_model_run_by_hand(policy, model, processor):
    """The adapter's conversions against an independent re-computation: joints relative to the state,
    grippers absolute, the prefix re-expressed against the new state, normalised with the stats."""
    obs = observation(1)
    P = 3
    prefix = obs.state + np.random.default_rng(2).normal(0, 0.05, (P, 14))
    chunk = policy.infer(obs, prefix)
    assert chunk.actions.shape == (T, 14) and chunk.actions.dtype == np.float64
    assert np.array_equal(chunk.actions[:P], prefix)
    assert (
        set(chunk.timing_ms) >= {"vlm", "dit", "total"} and chunk.timing_ms["total"] >= chunk.timing_ms["vlm"]
    )

    relative = np.array([True] * 6 + [False] + [True] * 6 + [False])
    mean, std = (t[0].double().numpy() for t in processor.stats["aloha"])
    idx = list(XR0_INDEX)
    target = np.zeros((1, P, 32))
    target[0, :, idx] = ((prefix - relative * obs.state - mean[:P, idx]) / std[:P, idx]).T
    state32 = np.zeros((1, 1, 32))
    state32[0, 0, idx] = obs.state
    views = [("Ego View", obs.images["cam_high"]), ("Left-Wrist View", obs.images["cam_left_wrist"]),
             ("Right-Wrist View", obs.images["cam_right_wrist"])]  # fmt: skip
    with torch.no_grad():
        x = sample_actions(
            model, model.encode(processor.encode(obs.instruction, views)), torch.tensor(state32, dtype=torch.float32),
            processor.get_action_mask("aloha"), torch.tensor(target, dtype=torch.float32), seed=observation_seed(obs, prefix),
        )  # fmt: skip
    by_hand = x[0].double().numpy()[:, idx] * std[:, idx] + mean[:, idx] + relative * obs.state
    by_hand[P:, [6, 13]] = np.clip(by_hand[P:, [6, 13]], 0.0, 1.0)  # grippers are fractions: clipped to 0..1
    np.testing.assert_allclose(
        chunk.actions, by_hand, rtol=1e-5, atol=1e-5
    )  # prefix rows included: round trip


def test_same_observation_same_chunk_and_seed_changes_it(policy):
    obs = observation(3)
    a, b = policy.infer(obs, np.zeros((0, 14))), policy.infer(obs, np.zeros((0, 14)))
    assert np.array_equal(a.actions, b.actions)
    c = policy.infer(replace(obs, t_ns=obs.t_ns + 1), np.zeros((0, 14)))
    assert not np.allclose(a.actions, c.actions)


def test_concurrent_calls_do_not_disturb_each_other(policy):
    observations = [observation(10 + i) for i in range(3)]
    expected = [policy.infer(o, np.zeros((0, 14))).actions for o in observations]
    results: dict[int, np.ndarray] = {}

    def work(i):
        results[i] = policy.infer(observations[i], np.zeros((0, 14))).actions

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(results[i], expected[i]) for i in range(3))


def test_a_batch_of_robots_gets_the_chunks_each_would_get_alone(policy, model, processor):
    observations = [observation(3), observation(4, t_ns=9), replace(observation(5), instruction="fold it")]
    observations[1] = replace(
        observations[1], images={c: img[:32] for c, img in observations[1].images.items()}
    )
    # no prefix, 5 rows, 2 rows; the second robot's images are smaller, so its prompt is shorter (padded)
    prefixes = [
        np.zeros((0, 14)),
        observations[1].state + 0.01 * np.arange(5)[:, None],
        observations[2].state + np.full((2, 14), 0.02),
    ]
    together = policy.infer_batch(observations, prefixes)
    reference = XR0Policy(model, processor, XR0PolicyConfig(sampler="reference"))
    for obs, prefix, chunk in zip(observations, prefixes, together, strict=True):
        alone = policy.infer(obs, prefix)
        np.testing.assert_allclose(chunk.actions, alone.actions, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(reference.infer(obs, prefix).actions, alone.actions, atol=1e-5, rtol=1e-5)
        assert np.array_equal(chunk.actions[: len(prefix)], prefix) and chunk.timing_ms["batch"] == 3
    with pytest.raises(ValueError, match="one prefix each"):
        policy.infer_batch(observations, prefixes[:2])


def test_one_view_policy(model, processor):
    one = XR0Policy(model, processor, XR0PolicyConfig(cameras=("cam_high",), seed=0))
    obs = observation(4)
    obs = replace(obs, images={"cam_high": obs.images["cam_high"]})
    assert one.infer(obs, np.zeros((0, 14))).actions.shape == (T, 14)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda o, p: (replace(o, images={k: v for k, v in o.images.items() if k != "cam_left_wrist"}), p), "camera 'cam_left_wrist'"),
        (lambda o, p: (replace(o, state=o.state[:13]), p), "observation.state"),
        (lambda o, p: (replace(o, state=np.full(14, np.nan)), p), "observation.state"),
        (lambda o, p: (o, np.zeros((7, 14))), "at most 6"),
        (lambda o, p: (o, np.zeros((2, 13))), r"shape \(P, 14\)"),
        (lambda o, p: (o, np.full((2, 14), np.inf)), "non-finite"),
        (lambda o, p: (replace(o, images={**o.images, "cam_high": np.zeros((64, 64, 4), np.uint8)}), p), "Ego View"),
    ],
)  # fmt: skip
def test_bad_input_is_named(policy, mutate, message):
    obs, prefix = mutate(observation(5), np.zeros((1, 14)))
    with pytest.raises(ValueError, match=message):
        policy.infer(obs, prefix)


def test_checkpoint_problems_are_named(model, processor):
    with pytest.raises(ValueError, match="no action statistics for robot type 'koch'"):
        XR0Policy(model, processor, XR0PolicyConfig(robot_type="koch"))
    with pytest.raises(ValueError, match="mask robot dims"):  # LIBERO stats: only dims 0–6 active
        XR0Policy(model, processor, XR0PolicyConfig(robot_type="libero_all"))
    with pytest.raises(ValueError, match="unknown camera 'cam_top'"):
        XR0PolicyConfig(cameras=("cam_top",))
    causal = XR0Policy(with_config(model, dit_mask="causal", max_prefix=0), processor)
    assert causal.spec.max_prefix == 0
    with pytest.raises(ValueError, match="at most 0"):
        causal.infer(observation(6), np.zeros((1, 14)))


def test_processor_without_pad_token_is_rejected():
    from tokenizers import Tokenizer, models

    with pytest.raises(ValueError, match="not a Qwen-VL tokenizer"):
        XR0Processor(Tokenizer(models.BPE()), None, {})


def test_action_conversions_are_inverse():
    from xr0.policy import RELATIVE_JOINTS, model_to_robot_actions, robot_to_model_actions, to_xr0

    rng = np.random.default_rng(0)
    rel = np.asarray(RELATIVE_JOINTS)
    actions, state = rng.normal(size=(2, 5, 14)), rng.normal(size=(2, 14))
    actions[..., [6, 13]] = rng.uniform(0.0, 1.0, (2, 5, 2))  # grippers are fractions
    model_space = robot_to_model_actions(actions, state, rel)
    assert model_space.shape == (2, 5, 32)
    np.testing.assert_allclose(model_space[..., 7], actions[..., 0] - state[:, None, 0])  # joint: relative
    np.testing.assert_array_equal(model_space[..., 6], actions[..., 6])  # gripper: absolute
    np.testing.assert_allclose(model_to_robot_actions(model_space, state, rel), actions)
    # a gripper beyond its range is clipped the same way both ways (training targets, decoded chunks)
    wide = actions.copy()
    wide[0, 0, 6], wide[0, 1, 13] = 1.3, -0.2
    assert robot_to_model_actions(wide, state, rel)[0, 0, 6] == 1.0
    back = model_to_robot_actions(to_xr0(wide) + 0 * state[:, None, :1], state * 0, rel * False)
    assert back[0, 0, 6] == 1.0 and back[0, 1, 13] == 0.0


def test_per_dimension_statistics_give_chunks_of_one_which_the_policy_refuses(model):
    from tests.xr0.conftest import aloha_stats

    stats = aloha_stats()
    one_row = {k: v[0] for k, v in stats.items()}  # (32,): the official processor makes chunks of T = 1
    processor = XR0Processor.build({"aloha": one_row})
    assert processor.get_action_mask("aloha").shape == (1, 1, 32)
    with pytest.raises(ValueError, match="per-timestep"):
        XR0Policy(model, processor, XR0PolicyConfig())
