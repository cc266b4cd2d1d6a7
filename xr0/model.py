"""The XR0 network: Qwen3-VL reads the views and the instruction once per chunk; a DiT action expert turns
noise into an action chunk while attending to the KV cache of the VLM's last text layers.

Shapes: B batch, L prompt tokens, T actions per chunk, A = 32 action/state dims, D DiT width,
H heads (= the VLM's KV heads), hd head width, q = 2 + T DiT tokens `[sink, state, a_0 … a_{T-1}]`.

Module and parameter names follow the official checkpoints exactly (spec §2.2), so published weights load
with `strict=True`. The flow sampler and the training loss live in `xr0.flow`; this file is the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import Qwen3VLForConditionalGeneration
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRMSNorm as RMSNorm
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

from xr0.config import TIMESTEP_DIM, DiTConfig, XR0Config
from xr0.vision import use_official_vision

NUM_MODULATIONS = 6  # shift/scale/gate for attention, shift/scale/gate for the MLP


# -- the action expert ---------------------------------------------------------------------------------
def timestep_embedding(t: torch.Tensor, dim: int = TIMESTEP_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding `[cos | sin]` of (already scaled) flow times t (B,), in fp32 → (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """RoPE on (B, H, q, hd) queries/keys with (B, q, hd) cos/sin — the same formula as Qwen3-VL's text model."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class Projector(nn.Module):
    """Linear(in→out) → GELU(tanh) → Linear(out→out), no biases (the official generic MLP)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, out_dim, bias=False),
            nn.GELU(approximate="tanh"),
            nn.Linear(out_dim, out_dim, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(TIMESTEP_DIM, hidden, bias=False), nn.SiLU(), nn.Linear(hidden, hidden, bias=False)
        )

    def forward(self, t_freq: torch.Tensor) -> torch.Tensor:
        return self.mlp(t_freq)


class TimestepProjector(nn.Module):
    """One Linear(D → 6·D, bias) shared by all layers ("adaLN-single"); no activation before it."""

    def __init__(self, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(hidden, NUM_MODULATIONS * hidden, bias=True))

    def forward(self, t_emb: torch.Tensor) -> torch.Tensor:
        return self.layers(t_emb)


class DiTAttention(nn.Module):
    """Fused qkv (with bias), per-head QK-RMSNorm before RoPE, joint attention over [VLM cache ; DiT]."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=True)
        self.q_norm = RMSNorm(cfg.head_dim, eps=cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, eps=cfg.rms_norm_eps)
        self.o_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x, rope, cache_k, cache_v, mask):
        B, q, D = x.shape
        # output rows: Q | K | V, heads contiguous inside each block
        qkv = self.qkv_proj(x).view(B, q, 3, self.num_heads, self.head_dim)
        qh, kh, vh = qkv.unbind(dim=2)  # (B, q, H, hd) each
        qh = self.q_norm(qh).transpose(1, 2)  # (B, H, q, hd)
        kh = self.k_norm(kh).transpose(1, 2)
        vh = vh.transpose(1, 2)
        qh, kh = apply_rope(qh, kh, *rope)
        k = torch.cat([cache_k, kh], dim=2)  # (B, H, L + q, hd): the VLM's keys (post k_norm and MRoPE) first
        v = torch.cat([cache_v, vh], dim=2)
        out = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask)  # (B, H, q, hd); True = may attend
        return self.o_proj(out.transpose(1, 2).reshape(B, q, D))


class DiTMLP(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DiTLayer(nn.Module):
    """Sandwich-norm block with AdaLN from the flow time; the stream is re-normalised after each block."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.adaln_table = nn.Parameter(torch.empty(NUM_MODULATIONS, cfg.hidden_size))
        self.attn = DiTAttention(cfg)
        self.mlp = DiTMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.middle_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.final_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def forward(self, x, t_mod, rope, cache_k, cache_v, mask):
        # (B, 6, D) → six (B, 1, D) modulations shared by every token of a sample
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaln_table[None] + t_mod
        ).chunk(6, 1)
        h = x + gate_msa * self.attn(
            modulate(self.input_layernorm(x), shift_msa, scale_msa), rope, cache_k, cache_v, mask
        )
        h = self.middle_layernorm(h)
        h = h + gate_mlp * self.mlp(modulate(self.post_layernorm(h), shift_mlp, scale_mlp))
        return self.final_layernorm(h)


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.layers = nn.ModuleList(DiTLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x, t_mod, rope, cache_keys, cache_values, mask):
        for layer, k, v in zip(self.layers, cache_keys, cache_values, strict=True):
            x = layer(x, t_mod, rope, k, v, mask)
        return x


# -- masks and positions ----------------------------------------------------------------------------------
def dit_self_mask(
    num_actions: int,
    mode: str,
    window: int,
    prefix_length: int = 0,
    blocked_prefix: torch.Tensor | None = None,
    device=None,
) -> torch.Tensor:
    """(q, q) bool, True = may attend, over `[sink, state, a_0 … a_{T-1}]`.

    causal: lower-triangular. band ("Λ"): sink and state causal among themselves; action i sees the sink,
    the state and actions i−window … i. `blocked_prefix` (P,) bool (training only): prefix columns that
    the noisy action rows may not see.
    """
    q = 2 + num_actions
    i = torch.arange(q, device=device)[:, None]
    j = torch.arange(q, device=device)[None, :]
    mask = j <= i
    if mode == "band":
        mask = mask & ((j < 2) | ((i >= 2) & (i - j <= window)))
    if blocked_prefix is not None and blocked_prefix.any():
        blocked_cols = torch.zeros(q, dtype=torch.bool, device=device)
        blocked_cols[2 : 2 + prefix_length] = blocked_prefix.to(device)
        noisy_rows = i >= 2 + prefix_length
        mask = mask & ~(noisy_rows & blocked_cols[None, :])
    return mask


def dit_attention_mask(vlm_mask: torch.Tensor, self_mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, q, L + q): every DiT token sees every real prompt token, then the DiT-token mask."""
    B, L = vlm_mask.shape
    q = self_mask.shape[0]
    prompt = vlm_mask.bool()[:, None, None, :].expand(B, 1, q, L)
    return torch.cat([prompt, self_mask[None, None].expand(B, 1, q, q)], dim=-1)


def dit_position_ids(
    last_position: torch.Tensor, num_actions: int, prefix_length: int, offset: int
) -> torch.Tensor:
    """(3, B, q) MRoPE ids continuing after the whole prompt: token k gets max + 1 + k on each axis, plus
    `offset` on the noisy action tokens (the ones after the prefix)."""
    k = torch.arange(2 + num_actions, device=last_position.device)
    pos = last_position[..., None] + 1 + k  # (3, B, q)
    if offset:
        pos[..., 2 + prefix_length :] += offset
    return pos


# -- the whole model --------------------------------------------------------------------------------------
@dataclass
class VLMContext:
    """What the DiT needs from one VLM pass; reused by every Euler step of a chunk."""

    keys: list[torch.Tensor]  # per DiT layer: (B, H, L, hd) VLM keys after k_norm and MRoPE
    values: list[torch.Tensor]  # per DiT layer: (B, H, L, hd)
    attention_mask: torch.Tensor  # (B, L) bool, True = real prompt token (False = right padding)
    last_position: torch.Tensor  # (3, B) the largest MRoPE id of each prompt, per axis

    def repeat_interleave(self, n: int) -> VLMContext:
        """Each sample n times in a row (training_repeat: several noise/time draws per VLM pass)."""
        return VLMContext(
            keys=[k.repeat_interleave(n, dim=0) for k in self.keys],
            values=[v.repeat_interleave(n, dim=0) for v in self.values],
            attention_mask=self.attention_mask.repeat_interleave(n, dim=0),
            last_position=self.last_position.repeat_interleave(n, dim=1),
        )


class XR0Model(nn.Module):
    def __init__(self, config: XR0Config, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        qwen = config.qwen_config()
        self.vlm = Qwen3VLForConditionalGeneration._from_config(
            qwen, attn_implementation=attn_implementation, dtype=torch.get_default_dtype()
        )
        use_official_vision(self.vlm)  # the vision tower as the official recipe (4.57.1) computes it
        d = config.dit_config
        # read once: the config's property builds a transformers config per call (~12 ms per chunk in `encode`)
        self.first_cached_layer = config.first_cached_layer
        self.dit = DiT(d)
        self.state_projector = Projector(config.state_dim, d.hidden_size)
        self.action_projector = Projector(config.action_dim, d.hidden_size)
        self.action_output_layer = Projector(d.hidden_size, config.action_dim)
        self.t_embedder = TimestepEmbedder(d.hidden_size)
        self.t_projector = TimestepProjector(d.hidden_size)
        self.sink = nn.Embedding(1, d.hidden_size)
        # the VLM's text RoPE (θ, interleaved MRoPE sections); identical axes make it plain 1-D RoPE
        self.rotary_emb = Qwen3VLTextRotaryEmbedding(qwen.text_config)
        self.reset_head_parameters()
        unused = self.unused_vlm_parameter_names()
        for name, p in self.named_parameters():
            if name in unused:
                p.requires_grad_(False)

    @property
    def dtype(self) -> torch.dtype:
        return self.sink.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.sink.weight.device

    def reset_head_parameters(self) -> None:
        """Explicit init of the action head (the VLM keeps transformers' init or loaded weights)."""
        for name, module in self.named_modules():
            if name.startswith("vlm"):
                continue
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, DiTLayer):
                with torch.no_grad():
                    module.adaln_table.normal_().div_(self.config.dit_config.hidden_size**0.5)

    def unused_vlm_parameter_names(self) -> set[str]:
        """VLM parameters no output depends on: the DiT reads only keys and values of the last text layer,
        and no logits are computed. They stay in the checkpoint (official layout) but are frozen."""
        text = self.vlm.config.text_config
        last = f"vlm.model.language_model.layers.{text.num_hidden_layers - 1}."
        unused = (
            "self_attn.q_proj.",
            "self_attn.q_norm.",
            "self_attn.o_proj.",
            "post_attention_layernorm.",
            "mlp.",
        )
        names = {"vlm.model.language_model.norm.weight"}
        for name, _ in self.named_parameters():
            if name.startswith(last) and name[len(last) :].startswith(unused):
                names.add(name)
        return names

    # -- the VLM, once per chunk ----------------------------------------------------------------------------
    def vlm_position_ids(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(3, B, L) MRoPE ids as Qwen3-VL computes them (padding filled with 1, as in transformers 4.57)."""
        mask = inputs["attention_mask"]
        grid = inputs.get("image_grid_thw")
        # The ids depend only on the prompt's layout (tokens, image grids, padding), the same for every chunk
        # of a rollout; at inference the last layout's ids are kept (get_rope_index is a Python loop).
        key = None
        if not torch.is_grad_enabled():
            parts = (inputs["input_ids"], inputs["mm_token_type_ids"], mask) + (
                () if grid is None else (grid,)
            )
            key = tuple((tuple(t.shape), t.cpu().numpy().tobytes()) for t in parts)
            cached = self.__dict__.get("_position_ids_cache")
            if cached is not None and cached[0] == key:
                return cached[1].to(mask.device)
        pos, _ = self.vlm.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], grid, None, mask
        )
        pos = pos.masked_fill(~mask.bool()[None], 1)
        if key is not None:
            self.__dict__["_position_ids_cache"] = (key, pos)
        return pos

    def encode(self, inputs: dict[str, torch.Tensor]) -> VLMContext:
        """Run the VLM over the prompt (no logits) and keep the KV cache of its last DiT-many text layers.

        `inputs`: the processor's `input_ids`, `attention_mask`, `mm_token_type_ids` (B, L), `pixel_values`
        (N, 1536) and `image_grid_thw` (n_images, 3).
        """
        position_ids = self.vlm_position_ids(inputs)
        out = self.vlm.model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            position_ids=position_ids,
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            mm_token_type_ids=inputs["mm_token_type_ids"],
            use_cache=True,
        )
        cache = out.past_key_values
        first = self.first_cached_layer
        layers = [cache.layers[first + i] for i in range(self.config.dit_config.num_hidden_layers)]
        return VLMContext(
            keys=[layer.keys for layer in layers],
            values=[layer.values for layer in layers],
            attention_mask=inputs["attention_mask"].bool(),
            last_position=position_ids.max(dim=-1).values,
        )

    # -- the DiT, once per Euler step ------------------------------------------------------------------------
    def velocity(
        self,
        ctx: VLMContext,
        x: torch.Tensor,
        t: torch.Tensor,
        state: torch.Tensor,
        action_mask: torch.Tensor,
        prefix_length: int = 0,
        blocked_prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted flow velocity (B, T, A) at actions x (B, T, A) and times t (B,).

        `state` (B, 1, A) raw (never normalised); `action_mask` (B, T, A) 1 on active dims. The first
        `prefix_length` rows of x are the clean prefix; their velocity is 0, so they never move.
        """
        B, T, _ = x.shape
        cfg, dtype = self.config, self.dtype
        D = cfg.dit_config.hidden_size
        # flow time → one (B, 6, D) modulation table shared by all layers; t is scaled in the model dtype
        t_freq = timestep_embedding(t.to(dtype) * 1000).to(dtype)  # (B, 256)
        t_mod = self.t_projector(self.t_embedder(t_freq)).view(B, NUM_MODULATIONS, D)
        tokens = torch.cat(
            [
                self.sink.weight[None].expand(B, 1, D),  # (B, 1, D)
                self.state_projector(state.to(dtype)),  # (B, 1, D)
                self.action_projector((x * action_mask).to(dtype)),  # (B, T, D)
            ],
            dim=1,
        )  # (B, q, D)
        band = cfg.dit_mask == "band"
        position_ids = dit_position_ids(
            ctx.last_position, T, prefix_length, cfg.noisy_rope_offset if band else 0
        )
        rope = self.rotary_emb(tokens, position_ids)  # cos, sin: (B, q, hd) in the model dtype
        self_mask = dit_self_mask(
            T, cfg.dit_mask, cfg.local_window, prefix_length, blocked_prefix, device=x.device
        )
        mask = dit_attention_mask(ctx.attention_mask, self_mask)
        h = self.dit(tokens, t_mod, rope, ctx.keys, ctx.values, mask)
        v = self.action_output_layer(h[:, -T:])  # (B, T, A)
        if prefix_length:
            v = torch.cat([torch.zeros_like(v[:, :prefix_length]), v[:, prefix_length:]], dim=1)
        return v


def parameter_counts(model: XR0Model) -> dict[str, int]:
    """Parameters by part (tied embeddings counted once); works on the meta device."""

    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    vision = count(model.vlm.model.visual)
    vlm = count(model.vlm)
    total = count(model)
    return {"vision": vision, "text": vlm - vision, "vlm": vlm, "action_head": total - vlm, "total": total}


def cast_parameters(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast parameters only: RoPE inverse frequencies stay fp32, as in transformers' own dtype loading."""
    for p in model.parameters():
        p.data = p.data.to(dtype)
    return model


def create_model(
    config: XR0Config, seed: int = 0, device="cpu", dtype: torch.dtype | None = None, **kwargs
) -> XR0Model:
    """A randomly initialised model, reproducible from `seed`, without touching the global RNG."""
    device = torch.device(device)
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda), torch.device(device):
        torch.manual_seed(seed)
        model = XR0Model(config, **kwargs)
    return cast_parameters(model, dtype) if dtype is not None else model
