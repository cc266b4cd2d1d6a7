"""The XR0 model's configuration and its named variants (`full`, `tiny`).

`XR0Config` describes one model: the Qwen3-VL backbone (`vlm_config`, the keyword arguments of
transformers' `Qwen3VLConfig`), the DiT action expert (`dit_config`), the 32-wide state/action layout, and
the two switches that separate the released checkpoints from the asynchronous post-training recipe:

- `dit_mask: causal` — the released (Hugging Face remote-code) behaviour: plain causal attention among
  the DiT tokens, no RoPE offset, no action prefix.
- `dit_mask: band` — the post-training ("Λ") behaviour: each action token sees the sink, the state and
  the `local_window` previous actions; noisy action tokens carry `noisy_rope_offset` extra positions; a
  clean action prefix of up to `max_prefix` rows can be given.

`config.json` in a checkpoint directory holds `to_dict()` of this, in the official layout (`model_type`
"mibot", `vlm_config`, `dit_config`, `state_length`, …); a config.json without the switches (an official
release) is read as the released causal path.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

log = logging.getLogger(__name__)

TIMESTEP_DIM = 256  # width of the sinusoidal flow-time embedding (spec §1.3)
MASK_MODES = ("causal", "band")

# Special token ids of the Qwen2/Qwen3 tokenizer (spec §1.2); the tiny tokenizer maps them elsewhere.
QWEN_SPECIAL_TOKENS: dict[str, int] = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}


@dataclass(frozen=True)
class DiTConfig:
    # Width of the DiT residual stream; must equal heads × head_dim, heads = the VLM's KV heads.
    hidden_size: int = 1024
    # Number of DiT layers; layer i attends to the KV cache of VLM text layer (n_text − n_dit + i).
    num_hidden_layers: int = 16
    # Per-head width; must equal the VLM text head_dim (the DiT joins the VLM's cached keys).
    head_dim: int = 128
    # KV heads (= query heads, group size 1); must equal the VLM text model's num_key_value_heads.
    num_key_value_heads: int = 8
    # SwiGLU width of each DiT MLP.
    intermediate_size: int = 4096
    # Epsilon of the DiT's RMSNorms.
    rms_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in (
            "hidden_size",
            "num_hidden_layers",
            "head_dim",
            "num_key_value_heads",
            "intermediate_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"dit_config.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size != self.num_key_value_heads * self.head_dim:
            raise ValueError(
                f"dit_config.hidden_size ({self.hidden_size}) must equal num_key_value_heads × head_dim "
                f"({self.num_key_value_heads} × {self.head_dim}): the DiT's query, key and value heads match one to one"
            )

    @property
    def num_heads(self) -> int:
        return self.hidden_size // self.head_dim


@dataclass(frozen=True)
class XR0Config:
    # Keyword arguments of transformers' Qwen3VLConfig: text_config, vision_config, special token ids.
    vlm_config: dict[str, Any]
    # The action expert.
    dit_config: DiTConfig = field(default_factory=DiTConfig)
    # State tokens per sample (the official models use 1).
    state_length: int = 1
    # Width of the padded state vector (32; robots place their values at fixed indices, the rest is 0).
    state_dim: int = 32
    # Default chunk length T when the action statistics are not per timestep (30 = 1 s at 30 Hz).
    action_length: int = 30
    # Width of the padded action vector (32; inactive dims are masked).
    action_dim: int = 32
    # causal: released checkpoints; band: the "Λ" mask of asynchronous post-training.
    dit_mask: Literal["causal", "band"] = "band"
    # band mode: how many previous action tokens each action token sees (the official value is 4).
    local_window: int = 4
    # band mode: extra RoPE positions on noisy action tokens (official 10); causal mode has no offset.
    noisy_rope_offset: int = 10
    # Euler steps of the flow sampler at inference (official 5).
    num_steps: int = 5
    # Largest clean action prefix the model was trained with (6 for async post-training, 0 = none).
    max_prefix: int = 6

    def __post_init__(self) -> None:
        if self.dit_mask not in MASK_MODES:
            raise ValueError(f"dit_mask must be one of {MASK_MODES}, got {self.dit_mask!r}")
        if self.state_length != 1:
            raise ValueError(
                f"state_length must be 1 (one state token, as in the official models), got {self.state_length}"
            )
        for name in ("state_dim", "action_dim", "action_length", "num_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.local_window < 0:
            raise ValueError(f"local_window must be >= 0, got {self.local_window}")
        if self.noisy_rope_offset < 0:
            raise ValueError(f"noisy_rope_offset must be >= 0, got {self.noisy_rope_offset}")
        if not 0 <= self.max_prefix < self.action_length:
            raise ValueError(
                f"max_prefix must be in 0..action_length-1 ({self.action_length - 1}), got {self.max_prefix}"
            )
        text = self.qwen_config().text_config
        dit = self.dit_config
        if dit.head_dim != text.head_dim:
            raise ValueError(
                f"dit_config.head_dim ({dit.head_dim}) must equal the VLM text head_dim ({text.head_dim})"
            )
        if dit.num_key_value_heads != text.num_key_value_heads:
            raise ValueError(
                f"dit_config.num_key_value_heads ({dit.num_key_value_heads}) must equal the VLM's "
                f"num_key_value_heads ({text.num_key_value_heads})"
            )
        if dit.num_hidden_layers > text.num_hidden_layers:
            raise ValueError(
                f"dit_config.num_hidden_layers ({dit.num_hidden_layers}) cannot exceed the VLM's text layers "
                f"({text.num_hidden_layers})"
            )

    def qwen_config(self):
        """The transformers `Qwen3VLConfig` of the backbone (built fresh; cheap)."""
        from transformers import Qwen3VLConfig

        return Qwen3VLConfig(**copy.deepcopy(self.vlm_config))

    @property
    def first_cached_layer(self) -> int:
        """Index of the VLM text layer whose KV cache DiT layer 0 reads (20 for the published model)."""
        return self.qwen_config().text_config.num_hidden_layers - self.dit_config.num_hidden_layers

    # -- config.json ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"model_type": "mibot", "architectures": ["MiBoTForActionGeneration"], **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> XR0Config:
        """Read a config.json (ours or an official release). Official files lack the mode switches: they
        describe the released causal path (no offset, no prefix)."""
        if "vlm_config" not in d or "dit_config" not in d:
            raise ValueError(f"{source} is not an XR0 (mibot) config: it has no vlm_config/dit_config")
        known = {f.name for f in fields(cls)}
        ignored = sorted(set(d) - known - _BOOKKEEPING_KEYS)
        if ignored:
            log.info("%s: ignoring keys this implementation does not use: %s", source, ", ".join(ignored))
        kwargs = {k: v for k, v in d.items() if k in known}
        if "dit_mask" not in d:
            log.info(
                "%s has no dit_mask: reading it as the released causal path (no offset, no prefix)", source
            )
            kwargs.update(dit_mask="causal", noisy_rope_offset=0, max_prefix=0)
        dit_known = {f.name for f in fields(DiTConfig)}
        dit = dict(d["dit_config"])
        heads = dit.get("num_attention_heads")
        if heads is not None and dit.get("hidden_size", 1024) != heads * dit.get("head_dim", 128):
            raise ValueError(f"{source}: dit_config.num_attention_heads × head_dim must equal hidden_size")
        kwargs["dit_config"] = DiTConfig(**{k: v for k, v in dit.items() if k in dit_known})
        kwargs["vlm_config"] = _strip_bookkeeping(dict(d["vlm_config"]))
        return cls(**kwargs)


_BOOKKEEPING_KEYS = {
    "model_type", "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
}  # fmt: skip


def _strip_bookkeeping(vlm: dict[str, Any]) -> dict[str, Any]:
    # `architectures`/`auto_map` of an outer model would make transformers look for remote code.
    for key in ("auto_map", "_name_or_path", "transformers_version"):
        vlm.pop(key, None)
    return vlm


# -- named variants (an explicit table, STYLE.md 3) --------------------------------------------------------
def qwen3_vl_4b() -> dict[str, Any]:
    """Qwen3-VL-4B-Instruct, as used unmodified by XR0 (spec §1.2)."""
    return {
        "text_config": {
            "vocab_size": 151936,
            "hidden_size": 2560,
            "intermediate_size": 9728,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "hidden_act": "silu",
            "max_position_embeddings": 262144,
            "rms_norm_eps": 1e-6,
            "attention_bias": False,
            "tie_word_embeddings": True,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_interleaved": True,
                "mrope_section": [24, 20, 20],
            },
        },
        "vision_config": {
            "depth": 24,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_heads": 16,
            "hidden_act": "gelu_pytorch_tanh",
            "out_hidden_size": 2560,
            "patch_size": 16,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [5, 11, 17],
            "in_channels": 3,
        },
        "image_token_id": QWEN_SPECIAL_TOKENS["<|image_pad|>"],
        "video_token_id": QWEN_SPECIAL_TOKENS["<|video_pad|>"],
        "vision_start_token_id": QWEN_SPECIAL_TOKENS["<|vision_start|>"],
        "vision_end_token_id": QWEN_SPECIAL_TOKENS["<|vision_end|>"],
        "tie_word_embeddings": True,
    }


# The tiny tokenizer (xr0.tokenizer) puts the special tokens right after its BPE vocabulary.
TINY_VOCAB = 448


def tiny_vlm(special_ids: dict[str, int]) -> dict[str, Any]:
    """A Qwen3-VL with the same structure at toy sizes (MRoPE, DeepStack, tied embeddings)."""
    return {
        "text_config": {
            "vocab_size": TINY_VOCAB,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "head_dim": 32,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "attention_bias": False,
            "tie_word_embeddings": True,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_interleaved": True,
                "mrope_section": [6, 5, 5],
            },
        },
        "vision_config": {
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "hidden_act": "gelu_pytorch_tanh",
            "out_hidden_size": 128,
            "patch_size": 16,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0, 1],
            "in_channels": 3,
        },
        "image_token_id": special_ids["<|image_pad|>"],
        "video_token_id": special_ids["<|video_pad|>"],
        "vision_start_token_id": special_ids["<|vision_start|>"],
        "vision_end_token_id": special_ids["<|vision_end|>"],
        "tie_word_embeddings": True,
    }


BPE_VOCAB = 400  # the tiny tokenizer's trained part (xr0/tokenizer.py); special tokens follow at fixed ids


def tiny_special_ids() -> dict[str, int]:
    """Where the tiny tokenizer puts Qwen's special tokens: right after the BPE vocabulary."""
    return {name: BPE_VOCAB + i for i, name in enumerate(QWEN_SPECIAL_TOKENS)}


def _full() -> XR0Config:
    return XR0Config(vlm_config=qwen3_vl_4b(), dit_config=DiTConfig())


def _tiny() -> XR0Config:
    dit = DiTConfig(
        hidden_size=128, num_hidden_layers=2, head_dim=32, num_key_value_heads=4, intermediate_size=256
    )
    return XR0Config(vlm_config=tiny_vlm(tiny_special_ids()), dit_config=dit)


def _small() -> XR0Config:
    """The tiny tokenizer with a 12-layer text model (768 wide, 4 KV heads of 64), an 8-block vision tower
    (512 wide, DeepStack from blocks 1/3/5) and a 6-layer DiT: the proportions of `full` at ≈1/35 of it."""
    vlm = tiny_vlm(tiny_special_ids())
    text = vlm["text_config"]
    text.update(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
        num_key_value_heads=4, head_dim=64,
    )  # fmt: skip
    text["rope_parameters"] = {**text["rope_parameters"], "mrope_section": [12, 10, 10]}  # sums to head_dim/2
    vlm["vision_config"].update(
        depth=8, hidden_size=512, intermediate_size=2048, num_heads=8, out_hidden_size=768,
        num_position_embeddings=1024, deepstack_visual_indexes=[1, 3, 5],
    )  # fmt: skip
    dit = DiTConfig(
        hidden_size=256, num_hidden_layers=6, head_dim=64, num_key_value_heads=4, intermediate_size=1024
    )
    return XR0Config(vlm_config=vlm, dit_config=dit)


# name -> (description, factory). `full` has the published shapes; masks and offsets are switches
# (`variant("full", dit_mask="causal")` is the released-checkpoint behaviour).
VARIANTS = {
    "full": ("the published XR0: Qwen3-VL-4B + 16-layer DiT (≈4.72 B parameters)", _full),
    "tiny": ("the same structure at toy sizes (≈1.7 M parameters) for tests and CPU benchmarks", _tiny),
    "small": ("a mid-size model (≈132 M parameters) for CPU measurements of the training modes", _small),
}


def variant(name: str, **overrides: Any) -> XR0Config:
    """A named variant, optionally with fields replaced (e.g. `dit_mask="causal"`)."""
    if name not in VARIANTS:
        from difflib import get_close_matches

        close = get_close_matches(name, VARIANTS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model variant {name!r}{hint}; variants are {', '.join(VARIANTS)}")
    config = VARIANTS[name][1]()
    return replace(config, **overrides) if overrides else config
