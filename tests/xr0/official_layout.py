"""The official checkpoint's tensor names and shapes, written out from the spec's table (§2.2) — on
purpose not derived from our model, so the comparison can fail."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dims:
    vision_hidden: int = 1024
    vision_depth: int = 24
    vision_intermediate: int = 4096
    vision_out: int = 2560
    patch: int = 16
    pos_embeddings: int = 2304
    deepstack: int = 3
    vocab: int = 151936
    text_hidden: int = 2560
    text_layers: int = 36
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    text_intermediate: int = 9728
    dit_hidden: int = 1024
    dit_layers: int = 16
    dit_intermediate: int = 4096


TINY = Dims(
    vision_hidden=64, vision_depth=2, vision_intermediate=128, vision_out=128, pos_embeddings=64, deepstack=2,
    vocab=448, text_hidden=128, text_layers=4, heads=4, kv_heads=4, head_dim=32, text_intermediate=256,
    dit_hidden=128, dit_layers=2, dit_intermediate=256,
)  # fmt: skip


def official_shapes(d: Dims = Dims()) -> dict[str, tuple[int, ...]]:
    s: dict[str, tuple[int, ...]] = {}
    v, hv, merged = "vlm.model.visual.", d.vision_hidden, 4 * d.vision_hidden
    s[v + "patch_embed.proj.weight"] = (hv, 3, 2, d.patch, d.patch)
    s[v + "patch_embed.proj.bias"] = (hv,)
    s[v + "pos_embed.weight"] = (d.pos_embeddings, hv)
    for i in range(d.vision_depth):
        b = f"{v}blocks.{i}."
        for n in ("norm1", "norm2"):
            s[b + n + ".weight"] = s[b + n + ".bias"] = (hv,)
        s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"] = (3 * hv, hv), (3 * hv,)
        s[b + "attn.proj.weight"], s[b + "attn.proj.bias"] = (hv, hv), (hv,)
        s[b + "mlp.linear_fc1.weight"], s[b + "mlp.linear_fc1.bias"] = (
            (d.vision_intermediate, hv),
            (d.vision_intermediate,),
        )
        s[b + "mlp.linear_fc2.weight"], s[b + "mlp.linear_fc2.bias"] = (hv, d.vision_intermediate), (hv,)
    mergers = [(v + "merger.", hv)] + [(f"{v}deepstack_merger_list.{k}.", merged) for k in range(d.deepstack)]
    for m, norm in mergers:
        s[m + "norm.weight"] = s[m + "norm.bias"] = (norm,)
        s[m + "linear_fc1.weight"], s[m + "linear_fc1.bias"] = (merged, merged), (merged,)
        s[m + "linear_fc2.weight"], s[m + "linear_fc2.bias"] = (d.vision_out, merged), (d.vision_out,)
    t, ht, hd = "vlm.model.language_model.", d.text_hidden, d.head_dim
    s[t + "embed_tokens.weight"] = (d.vocab, ht)
    for i in range(d.text_layers):
        b = f"{t}layers.{i}."
        s[b + "input_layernorm.weight"] = s[b + "post_attention_layernorm.weight"] = (ht,)
        s[b + "self_attn.q_proj.weight"] = (d.heads * hd, ht)
        s[b + "self_attn.k_proj.weight"] = s[b + "self_attn.v_proj.weight"] = (d.kv_heads * hd, ht)
        s[b + "self_attn.o_proj.weight"] = (ht, d.heads * hd)
        s[b + "self_attn.q_norm.weight"] = s[b + "self_attn.k_norm.weight"] = (hd,)
        s[b + "mlp.gate_proj.weight"] = s[b + "mlp.up_proj.weight"] = (d.text_intermediate, ht)
        s[b + "mlp.down_proj.weight"] = (ht, d.text_intermediate)
    s[t + "norm.weight"] = (ht,)
    D, inter = d.dit_hidden, d.dit_intermediate
    for i in range(d.dit_layers):
        b = f"dit.layers.{i}."
        s[b + "adaln_table"] = (6, D)
        s[b + "attn.qkv_proj.weight"], s[b + "attn.qkv_proj.bias"] = (3 * D, D), (3 * D,)
        s[b + "attn.q_norm.weight"] = s[b + "attn.k_norm.weight"] = (hd,)
        s[b + "attn.o_proj.weight"] = (D, D)
        s[b + "mlp.gate_proj.weight"] = s[b + "mlp.up_proj.weight"] = (inter, D)
        s[b + "mlp.down_proj.weight"] = (D, inter)
        for n in ("input", "middle", "post", "final"):
            s[f"{b}{n}_layernorm.weight"] = (D,)
    for p in ("state_projector", "action_projector"):
        s[p + ".layers.0.weight"], s[p + ".layers.2.weight"] = (D, 32), (D, D)
    s["action_output_layer.layers.0.weight"], s["action_output_layer.layers.2.weight"] = (32, D), (32, 32)
    s["t_embedder.mlp.0.weight"], s["t_embedder.mlp.2.weight"] = (D, 256), (D, D)
    s["t_projector.layers.0.weight"], s["t_projector.layers.0.bias"] = (6 * D, D), (6 * D,)
    s["sink.weight"] = (1, D)
    return s
