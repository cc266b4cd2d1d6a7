import numpy as np
import pytest

from drivers.joints import JOINT_NAMES
from drivers.safety import SafetyConfig, SafetyLayer

LIMITS = np.tile([-1.0, 1.0], (14, 1))
LIMITS[[6, 13]] = [0.0, 1.0]


def layer(**kw) -> SafetyLayer:
    return SafetyLayer(SafetyConfig(**kw), LIMITS, np.zeros(14))


def test_in_range_small_step_passes_unchanged():
    s = layer()
    target = np.full(14, 0.05)
    cmd = s.filter(target)
    np.testing.assert_array_equal(cmd.action, target)
    assert not cmd.rejected and not cmd.clamped.any()
    assert s.counters.clamped_delta == 0 and s.counters.clamped_limit == 0


def test_per_tick_step_is_limited_and_counted():
    s = layer(max_joint_delta_per_tick=0.1, max_gripper_delta_per_tick=0.25)
    cmd = s.filter(np.full(14, 0.9))
    expected = np.full(14, 0.1)
    expected[[6, 13]] = 0.25
    np.testing.assert_allclose(cmd.action, expected)
    assert cmd.clamped.all()
    assert s.counters.clamped_delta == 14
    # The next tick continues from what was sent, not from what was asked.
    np.testing.assert_allclose(s.filter(np.full(14, 0.9)).action[0], 0.2)


def test_limits_clamp_before_the_step():
    s = SafetyLayer(
        SafetyConfig(max_joint_delta_per_tick=5.0, max_gripper_delta_per_tick=1.0), LIMITS, np.zeros(14)
    )
    cmd = s.filter(np.full(14, 3.0))
    assert cmd.action[0] == 1.0 and cmd.action[6] == 1.0
    assert s.counters.clamped_limit == 14


def test_config_limits_tighten_robot_limits():
    s = SafetyLayer(
        SafetyConfig(max_joint_delta_per_tick=5.0, joint_limits={"left_waist": (-0.5, 0.5)}),
        LIMITS,
        np.zeros(14),
    )
    cmd = s.filter(np.full(14, 0.9))
    assert cmd.action[JOINT_NAMES.index("left_waist")] == 0.5
    assert cmd.action[JOINT_NAMES.index("right_waist")] == 0.9


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_is_rejected_and_arm_holds(bad):
    s = layer()
    s.filter(np.full(14, 0.05))
    target = np.full(14, 0.08)
    target[3] = bad
    cmd = s.filter(target)
    assert cmd.rejected
    np.testing.assert_array_equal(cmd.action, np.full(14, 0.05))
    assert s.counters.rejected_nonfinite == 1


def test_wrong_shape_is_an_error():
    with pytest.raises(ValueError, match=r"shape \(14,\)"):
        layer().filter(np.zeros(7))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="max_gripper_delta_per_tick"):
        SafetyConfig(max_gripper_delta_per_tick=0)
    with pytest.raises(ValueError, match="lower limit 1 must be below upper limit 0"):
        SafetyConfig(joint_limits={"left_waist": (1, 0)})
