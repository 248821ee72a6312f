"""Query strategies, one file each; the contract is in base.py.

Convention: HIGHER uncertainty = picked first (selection.top_k). A strategy whose natural score is
"lower is more uncertain" (margins) negates it in `uncertainty` and reports the value itself.

    random            seeded hash of the id                        per-sample   ce
    entropy           classifier entropy                           per-sample   ce
    margin            classifier top-1 minus top-2 probability     per-sample   ce
    least_confidence  1 - max classifier probability               per-sample   ce
    bald              MC-dropout mutual information (T passes)     per-sample   ce
    lloss             predicted loss (Learning Loss head)          per-sample   lloss
    tidal_entropy     TiDAL-H: entropy of the predicted TD         per-sample   tidal
    tidal_margin      TiDAL-M: margin of the predicted TD          per-sample   tidal
    coreset           k-center greedy on embeddings                set-based    ce
    badge             k-means++ on gradient embeddings             set-based    ce
    tidal_cluster     TiDAL-H shortlist, k-means for diversity     set-based    tidal
    typiclust         TypiClust: typical samples of uncovered      set-based    ce
                      k-means clusters (also al.initial_strategy)
    dynamical         dynamicAL: last-layer training dynamics      per-sample   ce
                      under the model's own pseudo-label
    tod               TOD: output discrepancy vs the previous      per-sample   ce
                      cycle's final weights (COD)
    td_measured_entropy   entropy of the measured TD (running-mean  per-sample   ce
                      softmax of the candidates during training)
    td_measured_margin    margin of the measured TD                per-sample   ce
    label_dispersion  Bengar et al.: how often the measured label  per-sample   ce
                      changed during training

(last column: the objective train.objective=auto trains with)
"""

from __future__ import annotations

from tidal_dist.job.errors import UserError
from tidal_dist.strategies.base import (OUTPUTS, SCORING_OUTPUTS, Outputs, ScoreContext, Selection,
                                        SelectionInputs, Strategy, register, registry)

# Importing the modules registers their strategies.
from tidal_dist.strategies import (  # noqa: E402,F401
    badge, bald, coreset, dynamical, entropy, label_dispersion, least_confidence, lloss, margin,
    random_sampling, td_measured_entropy, td_measured_margin, tidal, tidal_cluster, tod, typiclust)


def get_strategy(name: str) -> Strategy:
    table = registry()
    if name not in table:
        raise UserError(f"config key 'al.strategy': unknown strategy '{name}'; "
                        f"choose one of {', '.join(sorted(table))}")
    return table[name]


def check_outputs(strategy: Strategy, have: set[str], objective: str) -> None:
    """UserError, before any training, if the network cannot produce what the strategy reads.
    `have`: models.available_outputs of the network built for this run."""
    wanted = strategy.needs | strategy.keeps | strategy.keeps_labeled
    have = set(have) | SCORING_OUTPUTS
    if "td_logits" in wanted - have:
        raise UserError(f"config key 'train.record_td': strategy '{strategy.name}' scores with the "
                        f"TD module, which train.objective={objective} only trains with "
                        f"train.record_td=true")
    if "loss_pred" in wanted - have:
        raise UserError(f"config key 'train.objective': strategy '{strategy.name}' scores with the "
                        f"loss prediction head, which only train.objective=lloss (or auto) "
                        f"trains; got {objective}")
    if "mc_probs" in wanted - have:
        raise UserError(f"strategy '{strategy.name}' needs a dropout point: a backbone that exposes "
                        f"its pooled penultimate features (features(x)) and the classifier applied "
                        f"to them; this network's backbone does not")
    if wanted - have:
        raise UserError(f"strategy '{strategy.name}' needs {', '.join(sorted(wanted - have))}, "
                        f"which this network does not produce")


__all__ = ["OUTPUTS", "SCORING_OUTPUTS", "Outputs", "ScoreContext", "Selection", "SelectionInputs", "Strategy",
           "check_outputs", "get_strategy", "register", "registry"]
