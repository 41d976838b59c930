"""Exponential moving average of the trainable weights (Polyak averaging, https://doi.org/10.1137/0330046).

    ema <- decay * ema + (1 - decay) * theta        after every optimizer step

The shadow copies are float32 and keyed by parameter name, so they save as one safetensors file
and can be copied into the exported module (`copy_to`). Only trainable parameters are tracked:
the frozen UNet and VAE never change, so averaging them would only cost memory.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow weights of `module`'s parameters that require grad; `decay` in (0, 1)."""

    def __init__(self, module: nn.Module, *, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Overwrite `module`'s tracked parameters with the averages."""
        for name, p in module.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise ValueError(f"EMA state has keys {sorted(set(state) ^ set(self.shadow))[:5]} that do not match")
        self.shadow = {name: tensor.float().clone() for name, tensor in state.items()}
