"""The XR0 processor: prompt template, images, tokenizer and per-robot action statistics.

It reproduces the official `MiBotProcessor` contract (spec §3): the Qwen3-VL chat prompt with labelled
views, each `<|image_pad|>` expanded to one token per merged 32×32 patch, images resized to multiples of 32
within the checkpoint's pixel budget (`preprocessor_config.json` `size`: shortest_edge = min pixels,
longest_edge = max pixels), and `action_config = {robot_type: {mean, std}}` stored in the same file, from
which `get_action_mask` (and with it the chunk length: the statistics' T rows, or 1 for per-dimension
(A,) statistics, as the official processor broadcasts them) and `decode_action` follow.

State normalisation is an extension for models trained from scratch: the official checkpoints read the
state raw (spec §3.4), and so does any checkpoint whose `action_config[robot_type]` has no `state_mean` /
`state_std` (32,). A new random model is trained with them (`train.normalize_state: auto`): a raw state
whose dims differ 10× in spread, fed to a projector at init scale 0.02, is learned from ~10× more slowly
under Adam (measured on the privileged rung, docs/benchmarks.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xr0.images import image_patches

log = logging.getLogger(__name__)

IMAGE_PAD = "<|image_pad|>"
PAD_TOKEN = "<|endoftext|>"
STD_ACTIVE = 1e-5  # dims whose std is at most this are inactive (masked), as in the official processor
# New checkpoints resize every view to multiples of 32 with at most 90000 pixels ([PT] `resize_image`).
DEFAULT_MIN_PIXELS = 1024
DEFAULT_MAX_PIXELS = 90000
STATS_KEYS = ("mean", "std", "state_mean", "state_std")  # per robot type; the state pair is optional
PROMPT_CACHE = 256  # distinct prompts whose token ids are kept (tasks × view layouts × image sizes)


def normalize_instruction(instruction: str) -> str:
    """First letter upper-case and a final period, as the official server formats the task."""
    text = " ".join(instruction.split())
    if not text:
        raise ValueError("the instruction is empty")
    if "<|" in text:
        raise ValueError(f"the instruction may not contain special tokens ('<|…|>'): {instruction!r}")
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def build_prompt(instruction: str, view_labels: Sequence[str]) -> str:
    """The training/deploy prompt (spec §3.2) with one `# Label` line and image slot per view."""
    views = "".join(f"# {label}\n<|vision_start|>{IMAGE_PAD}<|vision_end|>\n" for label in view_labels)
    return (
        "<|im_start|>user\nThe following observations are captured from multiple views.\n"
        f"{views}Generate robot actions for the task:\n{normalize_instruction(instruction)} /no_cot<|im_end|>\n"
        "<|im_start|>assistant\n<cot></cot><|im_end|>\n"
    )


class XR0Processor:
    def __init__(
        self, tokenizer, image_processor, action_config: dict[str, dict[str, Any]], action_length: int = 30
    ):
        """`tokenizer`: a `tokenizers.Tokenizer` with Qwen's special tokens; `image_processor`: transformers'
        Qwen2-VL image processor; `action_config`: robot type → {"mean", "std"} of shape (T, 32), or (32,)
        (official broadcasting: chunks of T = 1); `action_length`: the configured chunk length, saved in
        processor_config.json (the chunk length itself comes from the statistics)."""
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.action_length = action_length
        self.image_token_id = self._token_id(IMAGE_PAD)
        self.pad_token_id = self._token_id(PAD_TOKEN)
        self.stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for robot_type, entry in action_config.items():
            self.stats[robot_type] = self._read_stats(robot_type, entry)
        # As given (float32 values), for saving: (T, A) stays per timestep, (A,) stays per dim.
        self.action_config = {
            rt: {k: np.asarray(entry[k], dtype=np.float32).tolist() for k in STATS_KEYS if k in entry}
            for rt, entry in action_config.items()
        }
        self.state_stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for robot_type, entry in action_config.items():
            if "state_mean" in entry or "state_std" in entry:
                self.state_stats[robot_type] = self._read_state_stats(robot_type, entry)
        # prompt text → token ids: a task's prompt is the same for every sample and every chunk
        self._ids: dict[str, list[int]] = {}

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"the tokenizer has no {token} token; it is not a Qwen-VL tokenizer")
        return token_id

    def _read_stats(self, robot_type: str, entry: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            mean = torch.as_tensor(np.asarray(entry["mean"], dtype=np.float32))
            std = torch.as_tensor(np.asarray(entry["std"], dtype=np.float32))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"action_config[{robot_type!r}] needs numeric 'mean' and 'std' arrays ({e})"
            ) from e
        if mean.shape != std.shape or mean.ndim not in (1, 2):
            raise ValueError(
                f"action_config[{robot_type!r}]: mean {tuple(mean.shape)} and std {tuple(std.shape)} must both be (T, A) or (A,)"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()) or (std < 0).any():
            raise ValueError(f"action_config[{robot_type!r}] has non-finite values or a negative std")
        if mean.ndim == 1:
            # As the official processor broadcasts them: (A,) → (1, A) → tensors (1, 1, A), so the action
            # mask, and with it the chunk, has T = 1. It still decodes a chunk of any length row by row.
            log.warning(
                "action_config[%r] holds per-dimension statistics (A,): as in the official processor they "
                "give chunks of 1 action, which the runner cannot schedule (it needs 2 or more); give "
                "per-timestep statistics (T, A) for chunks of T",
                robot_type,
            )
            mean, std = mean[None], std[None]
        return mean[None].contiguous(), std[None].contiguous()  # (1, T, A), T = 1 for per-dim stats

    def _read_state_stats(self, robot_type: str, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        where = f"action_config[{robot_type!r}]"
        try:
            mean = np.asarray(entry["state_mean"], dtype=np.float32)
            std = np.asarray(entry["state_std"], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{where} needs both 'state_mean' and 'state_std' as numeric arrays ({e})"
            ) from e
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"{where}: state_mean {mean.shape} and state_std {std.shape} must both be (A,)")
        if not (np.isfinite(mean).all() and np.isfinite(std).all()) or (std < 0).any():
            raise ValueError(f"{where} has a non-finite state_mean/state_std or a negative state_std")
        return mean, std

    # -- statistics ---------------------------------------------------------------------------------------
    def normalizes_state(self, robot_type: str) -> bool:
        """True when this checkpoint's model reads a normalised state (a from-scratch model of ours)."""
        return robot_type in self.state_stats

    def normalize_state(self, state: np.ndarray, robot_type: str) -> np.ndarray:
        """(…, A) raw model state → what the model reads: unchanged without state statistics (official);
        else (s − mean)/std on dims with std > 0 and 0 on the others. Training and inference share it."""
        state = np.asarray(state, dtype=np.float64)
        if robot_type not in self.state_stats:
            return state
        mean, std = self.state_stats[robot_type]
        if state.shape[-1] != mean.shape[0]:
            raise ValueError(
                f"state has {state.shape[-1]} dims; the state statistics for {robot_type!r} have {mean.shape[0]}"
            )
        active = std > STD_ACTIVE
        return np.where(active, (state - mean) / np.where(active, std, 1.0), 0.0)

    def list_robot_types(self) -> list[str]:
        return list(self.stats)

    def _stats(self, robot_type: str) -> tuple[torch.Tensor, torch.Tensor]:
        if robot_type not in self.stats:
            known = ", ".join(self.stats) or "none"
            raise KeyError(
                f"no action statistics for robot type {robot_type!r} in this checkpoint (it has: {known})"
            )
        return self.stats[robot_type]

    def chunk_length(self, robot_type: str) -> int:
        return self._stats(robot_type)[0].shape[1]

    def get_action_mask(self, robot_type: str, batch_size: int = 1) -> torch.Tensor:
        """(B, T, A) float, 1 where std > 1e-5: the active dims, and T the chunk length."""
        std = self._stats(robot_type)[1]
        return (std > STD_ACTIVE).float().repeat(batch_size, 1, 1)

    def decode_action(self, actions: torch.Tensor, robot_type: str) -> torch.Tensor:
        """Normalised (B, T, A) → robot units: actions·std + mean (official: no epsilon, no masking)."""
        mean, std = self._stats(robot_type)
        T = actions.shape[1]
        return actions.float() * std[:, :T].to(actions.device) + mean[:, :T].to(actions.device)

    def normalize_action(self, actions: torch.Tensor, robot_type: str) -> torch.Tensor:
        """Robot units (B, P, A) for the first P timesteps → normalised; inactive dims become 0. The exact
        inverse of `decode_action` on active dims."""
        mean, std = self._stats(robot_type)
        P = actions.shape[1]
        mean, std = mean[:, :P].to(actions.device), std[:, :P].to(actions.device)
        active = std > STD_ACTIVE
        return torch.where(active, (actions.float() - mean) / torch.where(active, std, 1.0), 0.0)

    # -- prompt and images --------------------------------------------------------------------------------
    def encode(self, instruction: str, views: Sequence[tuple[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        """One sample: `views` are (label, H×W×3 uint8 RGB image) in prompt order, e.g. ("Ego View", img).

        Returns `input_ids`, `attention_mask`, `mm_token_type_ids` (1, L), `pixel_values` (N, 1536) and
        `image_grid_thw` (n_views, 3).
        """
        if not views:
            raise ValueError("at least one camera view is needed")
        for label, image in views:
            if (
                not isinstance(image, np.ndarray)
                or image.ndim != 3
                or image.shape[2] != 3
                or image.dtype != np.uint8
            ):
                desc = (
                    f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
                )
                raise ValueError(f"view {label!r}: expected an H×W×3 uint8 RGB image, got {desc}")
        labels = [label for label, _ in views]
        pixel_values, grid = image_patches(self.image_processor, [image for _, image in views])
        counts = (grid.prod(-1) // self.image_processor.merge_size**2).tolist()
        pieces = build_prompt(instruction, labels).split(IMAGE_PAD)
        text = pieces[0] + "".join(IMAGE_PAD * n + piece for n, piece in zip(counts, pieces[1:], strict=True))
        ids = torch.tensor([self._token_ids(text)], dtype=torch.long)
        image_tokens = ids == self.image_token_id
        if int(image_tokens.sum()) != sum(counts):
            raise ValueError(
                f"the prompt has {int(image_tokens.sum())} image tokens where {sum(counts)} were expected"
            )
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": image_tokens.int(),
            "pixel_values": pixel_values,
            "image_grid_thw": grid,
        }

    def _token_ids(self, text: str) -> list[int]:
        ids = self._ids.get(text)
        if ids is None:
            if len(self._ids) >= PROMPT_CACHE:
                self._ids.clear()
            ids = self._ids[text] = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def collate(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Batch encoded samples, right-padding the token sequences (Qwen's `<|endoftext|>` as padding)."""
        L = max(s["input_ids"].shape[1] for s in samples)

        def pad(key: str, value: int) -> torch.Tensor:
            return torch.cat(
                [torch.nn.functional.pad(s[key], (0, L - s[key].shape[1]), value=value) for s in samples]
            )

        return {
            "input_ids": pad("input_ids", self.pad_token_id),
            "attention_mask": pad("attention_mask", 0),
            "mm_token_type_ids": pad("mm_token_type_ids", 0),
            "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
            "image_grid_thw": torch.cat([s["image_grid_thw"] for s in samples]),
        }

    # -- files --------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """tokenizer.json, preprocessor_config.json (image settings + action_config), processor_config.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / "tokenizer.json"))
        pre = self.image_processor.to_dict()
        pre.update(processor_class="MiBotProcessor", action_config=self.action_config)
        (directory / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
        proc = {"processor_class": "MiBotProcessor", "action_length": self.action_length}
        (directory / "processor_config.json").write_text(json.dumps(proc, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, action_length: int | None = None) -> XR0Processor:
        from tokenizers import Tokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        directory = Path(directory)
        for name in ("tokenizer.json", "preprocessor_config.json"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} has no {name}: it is not a complete XR0 checkpoint")
        pre = json.loads((directory / "preprocessor_config.json").read_text())
        action_config = pre.pop("action_config", {})
        for key in ("processor_class", "auto_map", "image_processor_type"):
            pre.pop(key, None)
        proc_file = directory / "processor_config.json"
        proc = json.loads(proc_file.read_text()) if proc_file.is_file() else {}
        length = action_length or proc.get("action_length", 30)
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        return cls(tokenizer, Qwen2VLImageProcessorPil.from_dict(pre), action_config, action_length=length)

    @classmethod
    def build(
        cls,
        action_config: dict[str, dict[str, Any]],
        special_ids: dict[str, int] | None = None,
        action_length: int = 30,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> XR0Processor:
        """A processor for a new model, with the offline-built tokenizer (`xr0.tokenizer`)."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from xr0.tokenizer import build_tokenizer

        image_processor = Qwen2VLImageProcessorPil.from_dict(
            {
                "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
                "patch_size": 16,
                "temporal_patch_size": 2,
                "merge_size": 2,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
            }
        )
        return cls(build_tokenizer(special_ids), image_processor, action_config, action_length=action_length)
