"""`xr0 model info` and `xr0 bench inference`, through the real command line."""

from __future__ import annotations

import json

from app.cli.main import main
from xr0.checkpoint import save_checkpoint


def test_model_info_full_counts_without_memory(capsys):
    assert main(["model", "info", "full", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"]["action_head"] == 278_458_368
    assert round(info["parameters"]["total"] / 1e9, 2) == 4.72
    assert info["dit_reads_vlm_layers"] == [20, 35] and info["dit_mask"] == "band"


def test_model_info_table_for_tiny(capsys):
    assert main(["model", "info", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "action head" in out and "band (window 4)" in out
    assert main(["model", "info", "--model", "tiny"]) == 0
    assert capsys.readouterr().out == out
    assert main(["model", "info", "--config", "tiny"]) == 0  # the old spelling, for one release
    captured = capsys.readouterr()
    assert captured.out == out and "--config after `info` is deprecated" in captured.err
    assert main(["model", "info", "config.yaml"]) == 1  # a wrong argument is one sentence, not the top usage
    assert "model config.yaml: not a model variant" in capsys.readouterr().err


def test_model_info_checks_a_checkpoint(model, processor, tmp_path, capsys):
    save_checkpoint(model, processor, tmp_path / "ckpt")
    assert main(["model", "info", str(tmp_path / "ckpt"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "ok (strict)" and info["robot_types"] == {"aloha": 16, "libero_all": 10}
    assert main(["model", "info", str(tmp_path / "nowhere")]) == 1
    assert "not a model variant" in capsys.readouterr().err


def test_bench_inference_tiny_prints_json_last(capsys):
    argv = [
        "bench",
        "inference",
        "--variant",
        "tiny",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--width",
        "64",
        "--height",
        "64",
        "--prefix",
        "2",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "inference" and result["device"] == "cpu" and result["prefix"] == 2
    assert {"vlm_ms", "dit_ms", "total_ms"} <= set(result) and result["total_ms"]["p50"] > 0


def test_bench_inference_full_needs_a_gpu(capsys):
    assert main(["bench", "inference", "--variant", "full", "--device", "cpu"]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err
