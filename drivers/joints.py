"""The fixed names and order of the bimanual state/action vector and of the cameras (DESIGN.md §3).

Joint positions are radians; the gripper is a fraction, 0 = closed … 1 = open. A bimanual vector is
14 numbers: left arm (6 joints + gripper), then right arm (6 joints + gripper) — the ALOHA order.
"""

from __future__ import annotations

SIDES: tuple[str, str] = ("left", "right")
ARM_JOINTS: tuple[str, ...] = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
ARM_DOF = len(ARM_JOINTS) + 1  # 6 joints + gripper
JOINT_NAMES: tuple[str, ...] = tuple(f"{side}_{j}" for side in SIDES for j in (*ARM_JOINTS, "gripper"))
STATE_DIM = len(JOINT_NAMES)  # 14
GRIPPER_INDICES: tuple[int, int] = (6, 13)

CAMERA_NAMES: tuple[str, ...] = ("cam_high", "cam_left_wrist", "cam_right_wrist", "cam_low")


def side_slice(side: str) -> slice:
    """The slice of a 14-vector that belongs to one arm: `left` → 0:7, `right` → 7:14."""
    if side not in SIDES:
        raise ValueError(f"arm side must be one of {SIDES}, got {side!r}")
    i = SIDES.index(side)
    return slice(i * ARM_DOF, (i + 1) * ARM_DOF)
