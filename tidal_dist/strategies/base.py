"""The interface every query strategy implements, and the registry."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_REGISTRY: dict[str, "Strategy"] = {}


@dataclass(frozen=True)
class Outputs:
    """What scoring computes for a batch of candidates (eval mode, no augmentation)."""

    ids: torch.Tensor  # int64 [B]
    logits: torch.Tensor  # classifier logits [B, C], float32
    td_logits: torch.Tensor  # TD module logits [B, C], float32


class Strategy:
    """Subclasses set `name` and implement `uncertainty`."""

    name: str = ""
    # The value written to the queries file next to each id (e.g. the margin itself); by default
    # the uncertainty.
    reported_as: str = "uncertainty"

    def uncertainty(self, out: Outputs, cycle_seed: int) -> torch.Tensor:
        """float64 [B]: higher = more uncertain."""
        raise NotImplementedError

    def reported(self, uncertainty: torch.Tensor) -> torch.Tensor:
        return uncertainty


def register(cls: type[Strategy]) -> type[Strategy]:
    _REGISTRY[cls.name] = cls()
    return cls


def registry() -> dict[str, Strategy]:
    return dict(_REGISTRY)


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(logits)) = -Σ p log p, computed from log-softmax for stability."""
    logp = torch.log_softmax(logits.double(), dim=1)
    return -(logp.exp() * logp).sum(dim=1)
