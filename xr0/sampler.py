"""The fused chunk sampler: the 5 Euler steps of inference, with everything that does not change between
steps computed once per chunk.

`xr0.flow.sample_actions` over `XR0Model.velocity` is the reference path (training uses it, tests compare
against it). Per velocity call it rebuilds the masks, the RoPE tables, the flow-time modulation and the
state token, and per layer it joins the VLM cache to the DiT's keys with `torch.cat`. At inference none of
that changes within a chunk, and at batch 1 the DiT is bound by the number of operations it launches, not
by arithmetic. So `ChunkSampler`, per chunk:

- joins each layer's VLM keys/values into one preallocated `[cache ; DiT]` buffer, once; every step writes
  only the DiT's own rows into its tail;
- builds the attention mask, the positions and RoPE tables, the state token and the flow-time modulation of
  every step and layer once (the times are known: k/steps);
- per layer and step: one fused RMSNorm for q and k together, RoPE as one matmul with a fixed signed
  permutation, `addcmul` for modulation and gated residuals, gate and up projections as one matmul (their
  weights joined once and re-joined only when a parameter changes);
- per request of a batch, its own prefix length and chunk length: rows past a request's chunk are padding
  that no real row attends to (the causal and band masks only look back), so a batch of robots with
  different horizons, prefixes and prompt lengths samples in one pass.

The outputs agree with the reference path within float rounding (tests/xr0/test_sampler.py states the
tolerances: fp32 ≤ 1e-5, bf16 within a few bf16 rounding steps). Between chunks a sampler keeps only the
joined weights and the masks, so threads may share one.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from xr0.model import NUM_MODULATIONS, VLMContext, XR0Model, dit_self_mask, timestep_embedding


def _rms(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Qwen's RMSNorm (normalise in fp32, cast back, then scale) as one fused op where the dtype allows."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    y = F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)
    return y if weight is None else y * weight


def _rotation(head_dim: int, dtype: torch.dtype, device) -> torch.Tensor:
    """R with x @ R = rotate_half(x) = [−x2, x1]: a signed permutation, exact in any dtype."""
    half = head_dim // 2
    r = torch.zeros(head_dim, head_dim, dtype=dtype, device=device)
    idx = torch.arange(half, device=device)
    r[idx + half, idx] = -1  # output column j < half takes −x[j + half]
    r[idx, idx + half] = 1  # output column j ≥ half takes x[j − half]
    return r


class _Weights:
    """Per-layer parameters rearranged for the fused path, rebuilt when any source parameter changes."""

    def __init__(self, model: XR0Model) -> None:
        self.model = model
        self.key: tuple | None = None

    def get(self):
        params = [
            p
            for layer in self.model.dit.layers
            for p in (layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight)
        ]
        params += [
            p for layer in self.model.dit.layers for p in (layer.attn.q_norm.weight, layer.attn.k_norm.weight)
        ]
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        if key != self.key:
            with torch.no_grad():
                self.gate_up = [
                    torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]).contiguous()
                    for layer in self.model.dit.layers
                ]
                # (2, 1, hd): q_norm's weight then k_norm's, applied to [q | k] normalised together
                self.qk_norm = [
                    torch.stack([layer.attn.q_norm.weight, layer.attn.k_norm.weight])[:, None]
                    for layer in self.model.dit.layers
                ]
            self.key = key
        return self


class ChunkSampler:
    """Fused inference sampling for one `XR0Model` (see the module docstring)."""

    def __init__(self, model: XR0Model, compile: bool = False) -> None:
        """`compile`: run the Euler steps through `torch.compile` (inductor). The first chunk of each new
        shape (batch, prompt length, horizon) compiles — a minute or two on a CPU, cached on disk for later
        processes — then the steps run about twice as fast on a CPU (elementwise work fused into few
        kernels). Prefix lengths are data, not shapes: they never recompile."""
        if compile and model.device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
            raise ValueError(
                "policy.compile needs a C++ compiler for torch.compile on the CPU (g++: apt-get install g++), "
                "or set policy.compile: false"
            )
        self.model = model
        self._weights = _Weights(model)
        self._masks: dict[tuple[int, int], torch.Tensor] = {}
        self._steps = torch.compile(self._integrate, dynamic=False) if compile else self._integrate
        self.compiled = compile

    def _self_mask(self, T: int, P: int, device) -> torch.Tensor:
        cfg = self.model.config
        key = (T, P)
        mask = self._masks.get(key)
        if mask is None or mask.device != torch.device(device):
            mask = dit_self_mask(T, cfg.dit_mask, cfg.local_window, P, device=device)
            self._masks[key] = mask
        return mask

    @torch.inference_mode()
    def sample(
        self,
        ctx: VLMContext,
        x: torch.Tensor,
        state: torch.Tensor,
        action_mask: torch.Tensor,
        prefix_lengths: Sequence[int] | int = 0,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """Integrate the flow for a batch of chunks → (B, T, A) normalised actions in the model dtype.

        `x` (B, T, A): each request's noise with its clean, normalised prefix already in its first P_b rows
        (kept unchanged); `state` (B, 1, A); `action_mask` (B, T, A), zero on the rows past a shorter
        request's chunk; `prefix_lengths` one P per request (or one for all).
        """
        model, cfg = self.model, self.model.config
        dtype, device = model.dtype, model.device
        B, T, A = x.shape
        P = [int(prefix_lengths)] * B if isinstance(prefix_lengths, int) else [int(p) for p in prefix_lengths]
        if len(P) != B or any(not 0 <= p < T for p in P):
            raise ValueError(f"prefix_lengths {P}: one per request, each in [0, {T})")
        d = cfg.dit_config
        D, H, hd = d.hidden_size, d.num_heads, d.head_dim
        steps = num_steps or cfg.num_steps
        dt = 1.0 / steps
        q = 2 + T
        L = ctx.attention_mask.shape[1]
        w = self._weights.get()
        layers = model.dit.layers

        x = x.to(device=device, dtype=dtype).clone()
        action_mask = action_mask.to(device=device, dtype=dtype)
        # -- once per chunk ------------------------------------------------------------------------------
        # flow-time modulation of every step and layer: (steps, 6, D) → per layer (steps, 1, 6, D)
        times = torch.arange(steps, device=device, dtype=torch.float64).mul(dt).to(dtype)
        t_freq = timestep_embedding(times * 1000).to(dtype)
        t_mod = model.t_projector(model.t_embedder(t_freq)).view(steps, 1, NUM_MODULATIONS, D)
        mods = []
        for layer in layers:
            m = (layer.adaln_table[None, None] + t_mod).unbind(2)  # six (steps, 1, D)
            # shift_msa, 1 + scale_msa, gate_msa, shift_mlp, 1 + scale_mlp, gate_mlp; each (steps, 1, 1, D)
            mods.append([m[0], 1 + m[1], m[2], m[3], 1 + m[4], m[5]])
        tokens = torch.empty(B, q, D, dtype=dtype, device=device)
        tokens[:, 0] = model.sink.weight[0]
        tokens[:, 1:2] = model.state_projector(state.to(device=device, dtype=dtype))
        band = cfg.dit_mask == "band"
        k = torch.arange(q, device=device)
        pos = ctx.last_position[..., None] + 1 + k  # (3, B, q)
        if band and cfg.noisy_rope_offset:
            noisy = k[None, :] >= (2 + torch.tensor(P, device=device))[:, None]  # (B, q)
            pos = pos + noisy[None] * cfg.noisy_rope_offset
        cos, sin = model.rotary_emb(tokens, pos)  # (B, q, hd)
        cos, sin = cos[:, :, None, None], sin[:, :, None, None]  # against (B, q, 2, H, hd)
        rot = _rotation(hd, dtype, device)
        prompt = ctx.attention_mask.to(device).bool()[:, None, None, :].expand(B, 1, q, L)
        own = torch.stack([self._self_mask(T, p, device) for p in P])[:, None]  # (B, 1, q, q)
        allowed = torch.cat([prompt, own], dim=-1)  # (B, 1, q, L + q), True = may attend
        # additive, converted once per chunk (a boolean mask is converted by every attention call)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))
        keys, values = [], []
        for ck, cv in zip(ctx.keys, ctx.values, strict=True):
            kb = torch.empty(B, H, L + q, hd, dtype=dtype, device=device)
            vb = torch.empty_like(kb)
            kb[:, :, :L], vb[:, :, :L] = ck, cv
            keys.append(kb)
            values.append(vb)
        rows = torch.arange(T, device=device)[None, :]
        step_weight = ((rows >= torch.tensor(P, device=device)[:, None]).to(dtype) * dt)[
            ..., None
        ]  # (B, T, 1)

        return self._steps(
            x, tokens, action_mask, mods, cos, sin, rot, mask, keys, values, step_weight, w.gate_up, w.qk_norm
        )

    def _integrate(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor,
        action_mask: torch.Tensor,
        mods: list[list[torch.Tensor]],
        cos: torch.Tensor,
        sin: torch.Tensor,
        rot: torch.Tensor,
        mask: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        step_weight: torch.Tensor,
        gate_up: list[torch.Tensor],
        qk_norm: list[torch.Tensor],
    ) -> torch.Tensor:
        """The Euler steps (everything per chunk is prepared by `sample`): only shapes, never prefix
        lengths, enter as Python values, so a compiled version is reused across chunks."""
        model = self.model
        d = model.config.dit_config
        D, H, hd, eps = d.hidden_size, d.num_heads, d.head_dim, d.rms_norm_eps
        B, q = tokens.shape[:2]
        L = keys[0].shape[2] - q
        for s in range(mods[0][0].shape[0]):
            tokens[:, 2:] = model.action_projector(x * action_mask)
            h = tokens
            for i, layer in enumerate(model.dit.layers):
                shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (m[s] for m in mods[i])
                a = layer.attn
                y = torch.addcmul(shift_a, _rms(h, layer.input_layernorm.weight, eps), scale_a)
                qkv = a.qkv_proj(y).view(B, q, 3, H, hd)
                qk = _rms(qkv[:, :, :2], None, eps) * qk_norm[i]  # q_norm and k_norm in one pass
                qk = torch.addcmul(qk * cos, qk @ rot, sin)  # RoPE on q and k together
                keys[i][:, :, L:] = qk[:, :, 1].transpose(1, 2)
                values[i][:, :, L:] = qkv[:, :, 2].transpose(1, 2)
                out = F.scaled_dot_product_attention(
                    qk[:, :, 0].transpose(1, 2), keys[i], values[i], attn_mask=mask
                )
                out = a.o_proj(out.transpose(1, 2).reshape(B, q, D))
                h = _rms(torch.addcmul(h, gate_a, out), layer.middle_layernorm.weight, eps)
                y = torch.addcmul(shift_m, _rms(h, layer.post_layernorm.weight, eps), scale_m)
                gate, up = F.linear(y, gate_up[i]).chunk(2, dim=-1)
                y = layer.mlp.down_proj(F.silu(gate) * up)
                h = _rms(torch.addcmul(h, gate_m, y), layer.final_layernorm.weight, eps)
            v = model.action_output_layer(h[:, 2:])
            x = torch.addcmul(x, v, step_weight)
        return x


def place_prefix(noise: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
    """(B, T, A) noise with a request's clean prefix (B, P, A) in its first rows: the sampler's start."""
    if prefix is None or prefix.shape[1] == 0:
        return noise
    return torch.cat([prefix.to(device=noise.device, dtype=noise.dtype), noise[:, prefix.shape[1] :]], dim=1)


def one_request(ctx: VLMContext, i: int) -> VLMContext:
    """Request i of a batched VLM pass, its padding kept (the reference path samples one request a call)."""
    return VLMContext(
        keys=[k[i : i + 1] for k in ctx.keys],
        values=[v[i : i + 1] for v in ctx.values],
        attention_mask=ctx.attention_mask[i : i + 1],
        last_position=ctx.last_position[:, i : i + 1],
    )
