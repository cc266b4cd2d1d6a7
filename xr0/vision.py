"""Qwen3-VL's vision tower computed the way transformers 4.57.1 computes it — the official XR0 recipe.

transformers 5.x rewrote two steps of the vision tower's forward. Both are the same mathematics, but in
bf16 they round differently, and the ~1e-3 difference they leave in the vision features grows to one or two
bf16 ulps of the VLM keys and the actions (docs/model.md, "transformers 5.x versus the official 4.57.1"):

- **Learned position embeddings, bilinearly resampled** from the square table (`pos_embed`, side × side)
  to each image's patch grid. 4.57.1 takes the source coordinates from `torch.linspace` (on the CPU, in
  fp32), casts the four corner weights to the table's dtype, multiplies each corner's embedding by its
  weight in that dtype and adds the four products one after another, rounding after every step. 5.x
  computes the coordinates in closed form, keeps the weights in fp32 and sums the products in fp32.
- **Rotary angles**: 4.57.1 builds one fp32 table `outer(0…max_hw−1, inv_freq)`, gathers (row, column)
  rows, duplicates them and takes cos/sin of the (N, head_dim) result; 5.x takes cos/sin per axis first.
  The values agree; computing them in the same layout keeps even the last fp32 bit.

`OfficialVisionModel` is transformers' own `Qwen3VLVisionModel` (same modules, same weights, same state
dict) with a forward that does those two steps as 4.57.1 did; every other step (patch embedding, blocks,
attention, DeepStack mergers, merger) calls transformers' modules unchanged. `use_official_vision`
installs it on a model's tower; `XR0Model` does so for every model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    BaseModelOutputWithDeepstackFeatures,
    Qwen3VLForConditionalGeneration,
    Qwen3VLVisionModel,
)
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids

UNSUPPORTED_OUTPUTS = ("output_hidden_states", "output_attentions")


def interpolated_position_embeddings(visual: Qwen3VLVisionModel, grid_thw: torch.Tensor) -> torch.Tensor:
    """(N, C) learned position embeddings of every patch, in the table's dtype and in the tower's patch
    order (2×2 merge blocks), bilinearly resampled with align_corners as 4.57.1 does it (module docstring).

    The coordinates and weights are computed on the CPU in fp32 (where 4.57.1 computes them), so a GPU run
    uses the same weights bit for bit."""
    table = visual.pos_embed.weight  # (side², C)
    side, merge = visual.num_grid_per_side, visual.spatial_merge_size
    grids = grid_thw.tolist()
    indices, weights = [], []  # per image: (4, h·w) corner indices and weights, raster order
    for _, h, w in grids:
        rows = torch.linspace(0, side - 1, h, dtype=torch.float32)  # source coordinates
        cols = torch.linspace(0, side - 1, w, dtype=torch.float32)
        r0, c0 = rows.int(), cols.int()
        r1, c1 = (r0 + 1).clip(max=side - 1), (c0 + 1).clip(max=side - 1)
        dr, dc = rows - r0, cols - c0
        corners = (  # (row, column, weight) of the four neighbours: top-left, top-right, bottom-left, …
            (r0, c0, (1 - dr)[:, None] * (1 - dc)[None]),
            (r0, c1, (1 - dr)[:, None] * dc[None]),
            (r1, c0, dr[:, None] * (1 - dc)[None]),
            (r1, c1, dr[:, None] * dc[None]),
        )
        indices.append(torch.stack([(r[:, None] * side + c[None]).flatten() for r, c, _ in corners]))
        weights.append(torch.stack([wt.flatten() for _, _, wt in corners]))
    index = torch.cat(indices, dim=1).to(device=table.device, dtype=torch.long)  # (4, Σ h·w)
    # the weights rounded to the table's dtype, then each product rounded to it too
    weight = torch.cat(weights, dim=1).to(device=table.device, dtype=table.dtype)
    corner = visual.pos_embed(index) * weight[..., None]  # (4, Σ h·w, C)
    embeds = corner[0] + corner[1] + corner[2] + corner[3]  # added in this order, as 4.57.1 does
    out = []
    for image, (t, h, w) in zip(embeds.split([h * w for _, h, w in grids]), grids, strict=True):
        image = image.repeat(t, 1)  # every frame of a video shares the grid
        # raster (t, h, w) → merge-block order (t, h/m, w/m, m, m), the order of the patches themselves
        image = image.view(t, h // merge, merge, w // merge, merge, -1).permute(0, 1, 3, 2, 4, 5)
        out.append(image.flatten(0, 4))
    return torch.cat(out)


def rotary_position_embeddings(
    visual: Qwen3VLVisionModel, grid_thw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (N, head_dim) in fp32: 2-D RoPE angles `[row·f | column·f | row·f | column·f]` of every
    patch, from one fp32 frequency table as 4.57.1 builds it."""
    inv_freq = visual.rotary_pos_emb.inv_freq.float()  # (head_dim/4,)
    position = get_vision_position_ids(grid_thw, visual.spatial_merge_size).to(inv_freq.device)  # (N, 2)
    max_hw = int(grid_thw[:, 1:].max())
    table = torch.outer(torch.arange(max_hw, device=inv_freq.device, dtype=inv_freq.dtype), inv_freq)
    angles = table[position].flatten(1)  # (N, head_dim/2)
    angles = torch.cat((angles, angles), dim=-1)  # (N, head_dim)
    return angles.cos(), angles.sin()


class OfficialVisionModel(Qwen3VLVisionModel):
    """transformers' Qwen3-VL vision tower with the forward of the official recipe (module docstring)."""

    def forward(self, hidden_states: torch.Tensor, grid_thw: torch.Tensor, **kwargs):
        """`hidden_states` (N, C·T·P·P) flattened patches, `grid_thw` (n_images, 3) → transformers'
        output: `pooler_output` (N/4, out_hidden) merged features, `deepstack_features` (one per DeepStack
        layer), `last_hidden_state` (N, C)."""
        return_dict = kwargs.pop("return_dict", True)
        for name in UNSUPPORTED_OUTPUTS:
            if kwargs.pop(name, False):
                raise ValueError(
                    f"{name}=True is not supported by XR0's official vision path; "
                    "call xr0.vision.use_official_vision(vlm, False) to run transformers' own forward"
                )
        cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid_thw, self.config)
        hidden_states = patch_embeddings(self, hidden_states)  # (N, C)
        positions, position_embeddings = self._grid_tables(grid_thw)
        hidden_states = hidden_states + positions
        deepstack = []
        for index, block in enumerate(self.blocks):
            hidden_states = block(
                hidden_states,
                cu_seqlens=cu_seqlens,
                max_seqlen=max_seqlen,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            if index in self.deepstack_visual_indexes:
                merger = self.deepstack_merger_list[self.deepstack_visual_indexes.index(index)]
                deepstack.append(merger(hidden_states))
        output = BaseModelOutputWithDeepstackFeatures(
            last_hidden_state=hidden_states,
            pooler_output=self.merger(hidden_states),
            deepstack_features=deepstack,
        )
        return output if return_dict else output.to_tuple()

    def _grid_tables(self, grid_thw: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Position embeddings and rotary tables of a batch's grids. They depend only on the grids (and the
        position table's weights), so at inference — a robot's camera sizes never change — they are kept
        for the last grids seen, and recomputed when the grids, the weights or the dtype change."""
        if torch.is_grad_enabled():
            return interpolated_position_embeddings(self, grid_thw), rotary_position_embeddings(
                self, grid_thw
            )
        table = self.pos_embed.weight
        key = (
            tuple(grid_thw.flatten().tolist()),
            table.data_ptr(),
            table._version,
            table.dtype,
            table.device,
        )
        cached = self.__dict__.get("_xr0_grid_tables")
        if cached is None or cached[0] != key:
            tables = (
                interpolated_position_embeddings(self, grid_thw),
                rotary_position_embeddings(self, grid_thw),
            )
            cached = (key, tables)
            self.__dict__["_xr0_grid_tables"] = cached
        return cached[1]


def patch_embeddings(visual: Qwen3VLVisionModel, patches: torch.Tensor) -> torch.Tensor:
    """The patch embedding: a Conv3d whose kernel is the whole C×T×P×P patch (stride the same), i.e. one
    matrix product (N, C·T·P·P) @ W(E, C·T·P·P)ᵀ + b. In fp32 it is computed as that product (the flattening
    orders agree; it differs from the convolution by summation order, ~1e-6) at about a third of the CPU
    time of mkldnn's 3-D convolution. In bf16 the convolution itself runs: its rounding is the official
    recipe's, which the bf16 parity reference checks bit for bit."""
    proj = visual.patch_embed.proj
    weight = proj.weight
    if weight.dtype != torch.float32:
        return visual.patch_embed(patches)
    return F.linear(
        patches.to(weight.dtype).reshape(-1, weight[0].numel()),
        weight.reshape(weight.shape[0], -1),
        proj.bias,
    )


def use_official_vision(vlm: Qwen3VLForConditionalGeneration, enabled: bool = True) -> None:
    """Run `vlm`'s vision tower as the official recipe (transformers 4.57.1) computes it, or, with
    `enabled=False`, with transformers' own forward again. Weights and state dict are untouched."""
    visual = vlm.model.visual
    if not isinstance(visual, Qwen3VLVisionModel):
        raise TypeError(f"expected a Qwen3-VL vision tower, got {type(visual).__name__}")
    visual.__class__ = OfficialVisionModel if enabled else Qwen3VLVisionModel
