"""AdamW over fp32 master copies of low-precision weights: the official run's optimiser numerics.

The official post-training runs Lightning's `bf16-mixed` precision under its DeepSpeed strategy (ZeRO
stage 2, Lightning's default). DeepSpeed then keeps the model's weights in bf16 — the forward and backward
run in bf16, gradients are bf16 — while its ZeRO optimiser holds an fp32 copy of every weight and fp32
Adam moments, steps those, and writes the result back rounded to bf16. `MasterWeightAdamW` does the same
on one process or under DDP: its parameters are the model's (bf16) weights, and each one's state holds
`master` (fp32), `exp_avg`, `exp_avg_sq` (fp32) and `step`. An update far below bf16's resolution
(e.g. lr 5e-7 at the end of the cosine) still accumulates in the master copy.

The update is torch's AdamW (decoupled weight decay, bias-corrected moments) on the master copy. State
dicts keep the fp32 tensors (torch's `load_state_dict` would cast them to the bf16 parameter dtype).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


class MasterWeightAdamW(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        if not lr >= 0 or not eps >= 0 or not weight_decay >= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(
                f"MasterWeightAdamW: lr {lr}, eps {eps}, weight_decay {weight_decay} must be >= 0 and "
                f"betas {betas} in [0, 1)"
            )
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["master"] = p.detach().float().clone()
                    state["exp_avg"] = torch.zeros_like(state["master"])
                    state["exp_avg_sq"] = torch.zeros_like(state["master"])
                master, m, v = state["master"], state["exp_avg"], state["exp_avg_sq"]
                grad = p.grad.float()
                state["step"] += 1
                step = float(state["step"])
                master.mul_(1 - lr * group["weight_decay"])
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
                master.addcdiv_(m, denom, value=-lr / (1 - beta1**step))
                p.copy_(master)
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loader, then the saved fp32 tensors put back (it casts them to the parameter dtype)."""
        saved = state_dict["state"]
        super().load_state_dict(state_dict)
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for i, p in zip(ids, params, strict=True):
            for key, value in saved.get(i, {}).items():
                if key != "step" and isinstance(value, torch.Tensor):
                    self.state[p][key] = value.to(device=p.device, dtype=torch.float32)
