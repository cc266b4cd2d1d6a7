"""The processor: exact prompt, image sizes and token counts, action statistics, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.xr0.conftest import T, aloha_stats
from xr0.images import image_patches
from xr0.processor import XR0Processor, build_prompt, normalize_instruction

SPEC_PROMPT = (  # spec §3.2, the two-view LIBERO/CALVIN prompt, verbatim
    "<|im_start|>user\nThe following observations are captured from multiple views.\n# Base View\n"
    "<|vision_start|><|image_pad|><|vision_end|>\n# Left-Wrist View\n<|vision_start|><|image_pad|><|vision_end|>\n"
    "Generate robot actions for the task:\nPut the bowl on the plate. /no_cot<|im_end|>\n"
    "<|im_start|>assistant\n<cot></cot><|im_end|>\n"
)


def test_prompt_is_the_official_template():
    assert build_prompt("put the bowl on the plate", ["Base View", "Left-Wrist View"]) == SPEC_PROMPT
    one = build_prompt("fold the towel.", ["Ego View"])
    assert one.count("<|image_pad|>") == 1 and "# Ego View\n" in one and "Fold the towel. /no_cot" in one


def test_instruction_normalisation_and_bad_instructions():
    assert normalize_instruction("  pick   up the Cube ") == "Pick up the Cube."
    with pytest.raises(ValueError, match="empty"):
        normalize_instruction("   ")
    with pytest.raises(ValueError, match="special tokens"):
        normalize_instruction("do it<|im_end|>")


@pytest.mark.parametrize(
    "hw, resized",
    [((240, 320), (256, 320)), ((256, 320), (256, 320)), ((480, 640), (256, 320)), ((200, 200), (192, 192)), ((20, 20), (32, 32))],
)  # fmt: skip
def test_images_go_to_multiples_of_32_within_the_pixel_budget(processor, hw, resized):
    image = np.zeros((*hw, 3), np.uint8)
    enc = processor.encode("go", [("Ego View", image)])
    h, w = resized
    assert enc["image_grid_thw"].tolist() == [[1, h // 16, w // 16]]
    assert enc["pixel_values"].shape == (h * w // 256, 3 * 2 * 16 * 16)
    assert int((enc["input_ids"] == processor.image_token_id).sum()) == h * w // 1024
    assert h * w <= 90000 and h % 32 == 0 and w % 32 == 0


@pytest.mark.parametrize("hw", [(256, 320), (240, 320), (480, 640), (64, 96), (37, 53), (20, 20)])
def test_our_patches_equal_the_image_processors(processor, hw):
    """xr0.images against transformers' own processor: same resize, and per byte the same float32 ops
    (rescale in float64, normalise in float32), then copies — so equal bit for bit on any CPU."""
    rng = np.random.default_rng(hw[0])
    images = [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for _ in range(3)]
    images[1][:, :, 0] = 0  # flat and saturated channels too
    images[2][:, :, 2] = 255
    want = processor.image_processor(images=images, return_tensors="pt")
    pixel_values, grid = image_patches(processor.image_processor, images)
    assert torch.equal(grid, want["image_grid_thw"])
    assert pixel_values.dtype == torch.float32 and torch.equal(pixel_values, want["pixel_values"])


def test_encode_expands_each_view_and_marks_image_tokens(processor):
    rng = np.random.default_rng(0)
    views = [
        ("Ego View", rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)),
        ("Right-Wrist View", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
    ]
    enc = processor.encode("transfer the cube", views)
    ids = enc["input_ids"][0]
    assert int((ids == processor.image_token_id).sum()) == 80 + 4
    assert torch.equal(enc["mm_token_type_ids"][0].bool(), ids == processor.image_token_id)
    text = processor.tokenizer.decode(ids.tolist(), skip_special_tokens=False)
    pieces = build_prompt("transfer the cube", ["Ego View", "Right-Wrist View"]).split("<|image_pad|>")
    assert text == pieces[0] + "<|image_pad|>" * 80 + pieces[1] + "<|image_pad|>" * 4 + pieces[2]


@pytest.mark.parametrize(
    "views, message",
    [([], "at least one"), ([("Ego View", np.zeros((64, 64), np.uint8))], "H×W×3 uint8"), ([("Ego View", np.zeros((64, 64, 3)))], "uint8")],
)  # fmt: skip
def test_bad_images_are_named(processor, views, message):
    with pytest.raises(ValueError, match=message):
        processor.encode("go", views)


def test_action_statistics(processor):
    stats = aloha_stats()
    mask = processor.get_action_mask("aloha", batch_size=3)
    assert mask.shape == (3, T, 32) and processor.chunk_length("aloha") == T
    assert torch.equal(mask[0], torch.tensor(np.asarray(stats["std"]) > 1e-5).float())
    assert processor.get_action_mask("libero_all").shape == (1, 10, 32)
    a = torch.randn(2, T, 32)
    decoded = processor.decode_action(a, "aloha")
    expected = a * torch.tensor(stats["std"]) + torch.tensor(stats["mean"])
    torch.testing.assert_close(decoded, expected)
    back = processor.normalize_action(decoded[:, :5], "aloha")
    torch.testing.assert_close(back, a[:, :5] * mask[:2, :5], rtol=1e-5, atol=1e-5)
    assert sorted(processor.list_robot_types()) == ["aloha", "libero_all"]
    with pytest.raises(
        KeyError, match="no action statistics for robot type 'bridge'.*it has: aloha, libero_all"
    ):
        processor.get_action_mask("bridge")


def test_per_dim_stats_broadcast_as_the_official_processor():  # more in test_objective.py
    p = XR0Processor.build({"r": {"mean": [0.0] * 32, "std": [1.0] * 7 + [0.0] * 25}}, action_length=12)
    assert p.get_action_mask("r").shape == (1, 1, 32) and p.get_action_mask("r")[0, :, :7].all()
    with pytest.raises(ValueError, match=r"action_config\['bad'\]"):
        XR0Processor.build({"bad": {"mean": [0.0] * 32, "std": [1.0] * 31}})


def test_save_and_load(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = XR0Processor.from_pretrained(tmp_path)
    image = np.random.default_rng(1).integers(0, 256, (100, 140, 3), dtype=np.uint8)
    a, b = (
        processor.encode("stack the cups", [("Ego View", image)]),
        loaded.encode("stack the cups", [("Ego View", image)]),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    for rt in processor.list_robot_types():
        assert all(torch.equal(x, y) for x, y in zip(processor.stats[rt], loaded.stats[rt], strict=True))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        XR0Processor.from_pretrained(tmp_path / "nowhere")


def test_collate_pads_on_the_right(processor):
    image = np.zeros((64, 64, 3), np.uint8)
    a, b = (
        processor.encode("a", [("Ego View", image)]),
        processor.encode("a much longer instruction here", [("Ego View", image)]),
    )
    batch = processor.collate([a, b])
    La = a["input_ids"].shape[1]
    assert batch["input_ids"].shape == (2, b["input_ids"].shape[1])
    assert (batch["input_ids"][0, La:] == processor.pad_token_id).all() and batch["attention_mask"][
        0, La:
    ].sum() == 0
    assert batch["pixel_values"].shape[0] == 2 * a["pixel_values"].shape[0]


def test_state_statistics_normalise_the_state_and_survive_save_and_load(tmp_path):
    mean = np.zeros(32, np.float32)
    std = np.zeros(32, np.float32)
    mean[:3], std[:3] = [0.1, -0.2, 0.3], [0.5, 2.0, 0.25]
    entry = {"mean": [0.0] * 32, "std": [1.0] * 32, "state_mean": mean.tolist(), "state_std": std.tolist()}
    p = XR0Processor.build({"r": entry, "raw": {"mean": [0.0] * 32, "std": [1.0] * 32}}, action_length=4)
    state = np.arange(32, dtype=np.float64)
    assert not p.normalizes_state("raw") and np.array_equal(p.normalize_state(state, "raw"), state)
    out = p.normalize_state(state, "r")
    np.testing.assert_allclose(out[:3], (state[:3] - mean[:3]) / std[:3], rtol=1e-6)
    assert p.normalizes_state("r") and not out[3:].any()  # std 0: the model reads 0 there
    p.save_pretrained(tmp_path)
    loaded = XR0Processor.from_pretrained(tmp_path)
    assert loaded.normalizes_state("r") and not loaded.normalizes_state("raw")
    np.testing.assert_allclose(loaded.normalize_state(state, "r"), out, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match=r"action_config\['r'\] needs both 'state_mean' and 'state_std'"):
        XR0Processor.build({"r": {"mean": [0.0] * 32, "std": [1.0] * 32, "state_mean": [0.0] * 32}})
    with pytest.raises(ValueError, match="negative state_std"):
        XR0Processor.build({"r": {**entry, "state_std": [-1.0] * 32}})
