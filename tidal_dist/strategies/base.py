"""The contract every query strategy implements, and the registry.

A strategy declares:
  objective   the training objective `train.objective=auto` resolves to (tidal_dist/objectives/)
  needs       the per-sample outputs its per-batch score reads, from OUTPUTS
  keeps       the vector outputs scoring must store per candidate for a set-based selection
              (2-D memmaps per rank, merged by rank 0); empty for per-sample strategies
  keeps_labeled  the same for the labeled set (Core-set's initial centres)

Per-sample strategies (keeps empty) turn each scored batch into an uncertainty per id
(`uncertainty`: float64, HIGHER = picked first); selection is top-k, ties to the lower id.
Set-based strategies also get a per-batch `uncertainty` (used as a pre-filter or reported value,
zeros when meaningless), then `select` picks k of the candidates from what was kept.
Adding a strategy = one file in this folder that calls `register`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from tidal_dist.config import ALConfig

_REGISTRY: dict[str, "Strategy"] = {}

# The per-sample outputs scoring can produce (eval mode, no augmentation).
OUTPUTS = ("logits", "td_logits", "embedding", "loss_pred", "mc_probs", "reference_logits",
           "measured_td")
# Outputs the cycle itself provides, whatever the network: reference_logits, the candidates'
# logits under a second set of weights of the same network (cycle/score.py: TOD's earlier model);
# measured_td, the candidates' TD measured during training (training/measure.py).
SCORING_OUTPUTS = frozenset({"reference_logits", "measured_td"})


@dataclass(frozen=True)
class Outputs:
    """One batch of candidates' outputs. Fields the network has no head for are None."""

    ids: torch.Tensor  # int64 [B], on the CPU
    logits: torch.Tensor  # classifier logits [B, C], float32
    td_logits: torch.Tensor | None = None  # TD module logits [B, C]
    embedding: torch.Tensor | None = None  # pooled penultimate features [B, D]
    loss_pred: torch.Tensor | None = None  # predicted loss [B]
    reference_logits: torch.Tensor | None = None  # logits under the reference weights [B, C]
    # measured_td: the running mean of the measured softmax [B, C], the measurements' argmax
    # votes per class [B, C] and their number [B] (dynamics/measured.py)
    measured_mean: torch.Tensor | None = None
    measured_votes: torch.Tensor | None = None
    measured_count: torch.Tensor | None = None
    # The classifier's last layer, for strategies that perturb the embedding (BALD's MC dropout).
    classifier: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class ScoreContext:
    cycle_seed: int  # differs per cycle; seeds anything random in a score
    al: ALConfig = field(default_factory=ALConfig)


@dataclass
class SelectionInputs:
    """What a set-based strategy selects from (rank 0, after the merge). Rows are candidates in
    ascending id order; arrays may be memmaps."""

    ids: np.ndarray  # int64 [N]
    uncertainty: np.ndarray  # float64 [N], the per-batch scores
    kept: dict[str, np.ndarray]  # name -> [N, ...], the strategy's `keeps`
    labeled: dict[str, np.ndarray]  # name -> [L, ...], the strategy's `keeps_labeled`
    k: int
    seed: int
    device: torch.device
    al: ALConfig = field(default_factory=ALConfig)

    def tensor(self, name: str, of_labeled: bool = False) -> torch.Tensor:
        """A kept output (`kept`, or `labeled` with of_labeled) as a tensor on the selection
        device. On the CPU it reads the merged memmap in place: no copy of N x D, and selection
        never writes to it, so torch's warning about a read-only array does not apply."""
        array = np.asarray((self.labeled if of_labeled else self.kept)[name])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(array).to(self.device)


@dataclass
class Selection:
    indices: np.ndarray  # int64 [k]: rows of SelectionInputs, in pick order
    reported: np.ndarray  # float64 [k]: the value written next to each pick


class Strategy:
    """Subclasses set `name` (and the declarations above) and implement `uncertainty`; set-based
    ones also `select`."""

    name: str = ""
    objective: str = "ce"
    needs: frozenset[str] = frozenset({"logits"})
    keeps: frozenset[str] = frozenset()
    keeps_labeled: frozenset[str] = frozenset()
    # A cheap per-sample score is also logged for the ablation by every run (al.log_scores).
    cheap: bool = False
    # What the value written next to each pick means (e.g. the margin itself).
    reported_as: str = "uncertainty"

    @property
    def set_based(self) -> bool:
        return bool(self.keeps)

    def uncertainty(self, out: Outputs, ctx: ScoreContext) -> torch.Tensor:
        """float64 [B]: higher = more uncertain."""
        raise NotImplementedError

    def reported(self, uncertainty: torch.Tensor) -> torch.Tensor:
        return uncertainty

    def select(self, inputs: SelectionInputs) -> Selection:
        raise NotImplementedError(f"strategy '{self.name}' is per-sample: selection is top-k")


def register(cls: type[Strategy]) -> type[Strategy]:
    unknown = (cls.needs | cls.keeps | cls.keeps_labeled) - set(OUTPUTS)
    if unknown:
        raise ValueError(f"strategy '{cls.name}' declares unknown outputs {sorted(unknown)}")
    _REGISTRY[cls.name] = cls()
    return cls


def registry() -> dict[str, Strategy]:
    return dict(_REGISTRY)


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(logits)) = -Σ p log p, computed from log-softmax for stability (float64)."""
    logp = torch.log_softmax(logits.double(), dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def entropy_of_probs(probs: torch.Tensor) -> torch.Tensor:
    """-Σ p log p of probability rows (0 log 0 = 0), float64."""
    probs = probs.double()
    return -(probs * probs.clamp(min=1e-300).log()).sum(dim=1)


def top_two(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest and second-largest probability of each row."""
    top = probs.topk(2, dim=1).values if probs.shape[1] > 1 else torch.cat(
        [probs, torch.zeros_like(probs)], dim=1)
    return top[:, 0], top[:, 1]
