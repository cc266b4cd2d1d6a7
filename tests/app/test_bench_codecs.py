"""`xr0 bench codecs` and its test content (app/bench/content.py), on tiny frames."""

import json
from pathlib import Path

import numpy as np
import pytest

from app.bench import codecs, content
from app.cli.main import main

pytest.importorskip("skimage")


@pytest.fixture
def small_config(tmp_path: Path) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text("cameras:\n  cam_high: {width: 64, height: 48}\n")
    return p


def test_camera_like_is_deterministic_moving_and_distinct_per_camera():
    a = content.camera_like(0.2, height=48, width=64, seed=0)
    assert list(a) == list(content.CAMERAS)
    for frames in a.values():
        assert frames.shape == (6, 48, 64, 3) and frames.dtype == np.uint8
        assert 20 < frames.mean() < 235  # a picture, not a blank
    b = content.camera_like(0.2, height=48, width=64, seed=0)
    assert all(np.array_equal(a[cam], b[cam]) for cam in a)
    c = content.camera_like(0.2, height=48, width=64, seed=1)
    assert not np.array_equal(a["cam_high"], c["cam_high"])
    high, wrist = (a[cam].astype(np.float64) for cam in ("cam_high", "cam_left_wrist"))
    assert np.abs(high - wrist).mean() > 10  # different scenes
    assert np.abs(high[-1] - high[0]).mean() > 1  # frames change over time
    # the wrist camera rides the arm: it moves more than the high camera
    assert np.abs(wrist[-1] - wrist[0]).mean() > np.abs(high[-1] - high[0]).mean()


def test_camera_like_has_sensor_noise():
    noisy = content.camera_like(0.1, height=48, width=64, cameras=("cam_high",))["cam_high"]
    clean = content.camera_like(0.1, height=48, width=64, cameras=("cam_high",), noise=False)["cam_high"]
    noise = noisy.astype(np.float64) - clean
    assert 1.5 < noise.std() < 8  # read noise σ 2 plus shot noise ∝ √intensity
    assert abs(noise.mean()) < 0.5


def test_simulator_renders_every_camera_while_the_script_runs():
    pytest.importorskip("mujoco")
    frames = content.simulator(0.1, height=24, width=32)
    assert list(frames) == list(content.CAMERAS)
    for f in frames.values():
        assert f.shape == (3, 24, 32, 3) and f.dtype == np.uint8 and f.std() > 1
    assert not np.array_equal(frames["cam_high"], frames["cam_left_wrist"])


def test_depth_like_is_millimetres_with_holes():
    d = content.depth_like(0.2, height=48, width=64, seed=0)
    assert d.shape == (6, 48, 64) and d.dtype == np.uint16
    valid = d[d > 0]
    assert 300 < np.median(valid) < 1500 and valid.max() < 5000
    holes = (d == 0).mean()
    assert 0.01 < holes < 0.6
    assert (d[:, :, 0] == 0).all()  # the stereo camera's left invalid band
    assert np.array_equal(d, content.depth_like(0.2, height=48, width=64, seed=0))
    assert not np.array_equal(d[0], d[-1])


def _rows(result: dict, section: str) -> dict:
    rows = result["depth"]["rows"] if section == "depth" else result["content"][section]["rows"]
    return {r["name"]: r for r in rows}


def test_bench_codecs_end_to_end(small_config, capsys):
    only = "jpeg-q75,jpeg-q95,lerobot,depth-zstd3,depth-png"
    argv = ["bench", "codecs", "--config", str(small_config), "--seconds", "0.2", "--width", "64"]
    argv += ["--height", "48", "--content", "camera", "--only", only, "--markdown"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "codecs" and result["machine"]["cores"] >= 1
    assert list(result["content"]) == ["camera"] and result["content"]["camera"]["frames"] == 6
    rows = _rows(result, "camera")
    assert set(rows) == {"jpeg-q75", "jpeg-q95", "av1-g2-crf30 (lerobot)"}
    q75, q95 = rows["jpeg-q75"], rows["jpeg-q95"]
    assert q95["psnr_db"] > q75["psnr_db"] > 20
    assert q95["bytes_per_min"] > q75["bytes_per_min"] > 0
    assert sum(q75["bytes_per_min_per_camera"].values()) == pytest.approx(q75["bytes_per_min"], abs=3)
    assert 0 < q75["ssim"] <= 1 and q75["encode_realtime_x"] > 0 and q75["sample_ms"] > 0
    assert q75["psnr_clean_db"] > 20 and result["content"]["camera"]["noise_psnr_db"] > 20
    lerobot = rows["av1-g2-crf30 (lerobot)"]
    if "skipped" not in lerobot:
        assert lerobot["kind"] == "video" and lerobot["settings"]["gop"] == 2 and lerobot["psnr_db"] > 20
        assert lerobot["frame_ms_seek"] > 0  # GOP 2: a reader can start at the keyframe before t
    depth = _rows(result, "depth")
    assert {"depth-png", "depth-zstd3"} <= set(depth)
    for row in depth.values():
        assert row["lossless"] is True and row["bytes_per_min"] > 0 and row["ratio"] > 1
    assert "| jpeg-q75 |" in result["markdown"]


def test_a_lossy_depth_row_is_an_error():
    import imagecodecs

    lossy = codecs.DepthRow(
        "depth-lossy",
        ("ZSTD",),
        lambda img: imagecodecs.zstd_encode(np.ascontiguousarray((img >> 1) << 1)),
        codecs._raw_decoder(imagecodecs.zstd_decode),
        raw=True,
    )
    depth = np.full((2, 8, 8), 1001, np.uint16)
    with pytest.raises(RuntimeError, match="depth-lossy does not round-trip"):
        codecs.measure_depth_row(lossy, depth, 30.0)


def test_a_codec_the_install_lacks_is_a_skipped_row(small_config, capsys, monkeypatch):
    absent = codecs.StillRow("nope-q1", "NOPE_NO_SUCH_CODEC", lambda img: b"", lambda b: np.zeros(1))
    monkeypatch.setattr(codecs, "image_rows", lambda: [absent])
    argv = ["bench", "codecs", "--config", str(small_config), "--seconds", "0.1", "--width", "32"]
    assert main([*argv, "--height", "24", "--content", "camera", "--only", "nope"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (row,) = result["content"]["camera"]["rows"]
    assert row["name"] == "nope-q1" and "imagecodecs" in row["skipped"]
    assert result["depth"]["rows"] == []


def test_bad_arguments_are_one_sentence(small_config, capsys):
    argv = ["bench", "codecs", "--config", str(small_config), "--seconds", "0.1"]
    assert main([*argv, "--content", "webcam"]) == 1
    assert "--content" in capsys.readouterr().err
    assert main([*argv, "--only", "no-such-row"]) == 1
    assert "matches no row" in capsys.readouterr().err
