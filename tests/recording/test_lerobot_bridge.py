"""The bridge's feature mapping (pure Python; the lerobot round trip is in tests/app/test_lerobot.py)."""

from recording.lerobot_bridge import unsupported_features


def test_features_we_cannot_represent_are_named():
    feats = {
        "observation.state": {"dtype": "float32", "shape": (14,)},
        "action": {"dtype": "float32", "shape": (14,)},
        "observation.images.cam_high": {"dtype": "video", "shape": (480, 640, 3)},
        "observation.images.depth": {"dtype": "video", "shape": (480, 640, 1)},
        "observation.environment_state": {"dtype": "float32", "shape": (7,)},
        "timestamp": {"dtype": "float32", "shape": (1,)},
        "frame_index": {"dtype": "int64", "shape": (1,)},
    }
    bad = unsupported_features(feats)
    assert bad == [
        "observation.images.depth (video (480, 640, 1): only RGB images/videos are stored)",
        "observation.environment_state (float32 (7,))",
    ]
    assert unsupported_features({k: feats[k] for k in ("observation.state", "action", "timestamp")}) == []
    # what the user chose to leave out, and our own extra features, are not in the way
    assert (
        unsupported_features(feats, drop=("observation.images.depth", "observation.environment_state")) == []
    )
    assert unsupported_features({"xr0.leader.action": {"dtype": "float32", "shape": (14,)}}) == []
