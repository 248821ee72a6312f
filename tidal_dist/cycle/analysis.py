"""Per-cycle measurements beyond accuracy: the TiDAL paper's module analysis and the score ablation.

Module analysis (Kye et al., ICCV 2023, sec. 4.4): over the labeled set at the end of a cycle, how
far the module's predicted TD and the classifier's softmax are from the actual TD (the recorded
running mean of the softmax): KL(actual ‖ predicted) and KL(actual ‖ classifier softmax).

Score ablation: with al.log_scores every cheap per-sample score is kept for every candidate, so one
run shows, for each score, which k candidates it would have picked: their overlap with the actual
queries, the classifier's error rate on them and their classes (where the labels are known, i.e.
with the simulated oracle).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tidal_dist.selection import top_k


def kl_rows(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(target ‖ softmax(logits)) per row, float64; 0 log 0 = 0."""
    return F.kl_div(F.log_softmax(logits.double(), dim=1), target.double(),
                    reduction="none").sum(dim=1)


def module_kl_sums(actual_td: torch.Tensor, td_logits: torch.Tensor,
                   logits: torch.Tensor) -> torch.Tensor:
    """[Σ KL(actual ‖ module), Σ KL(actual ‖ classifier), rows] for one batch, float64."""
    return torch.stack([kl_rows(actual_td, td_logits).sum(), kl_rows(actual_td, logits).sum(),
                        torch.tensor(float(len(actual_td)), dtype=torch.float64,
                                     device=actual_td.device)])


def score_ablation(merged: dict[str, np.ndarray], queried_ids: np.ndarray, k: int,
                   true_labels: np.ndarray | None, num_classes: int) -> dict[str, dict]:
    """{score name: {overlap_with_queried, and with the candidates' true labels: error_rate (the
    classifier's, on the score's top-k), histogram (their classes)}} for each logged score
    (merged["score_<name>"]); "all_candidates" holds the classifier's error rate on every
    candidate, the baseline an uncertainty score should beat."""
    k = min(k, len(merged["ids"]))
    result: dict[str, dict] = {}
    if true_labels is not None:
        result["all_candidates"] = {"error_rate": float(np.mean(merged["predicted"] != true_labels))}
    for column in sorted(c for c in merged if c.startswith("score_")):
        picks = top_k(merged["ids"], merged[column], k)
        entry = {"overlap_with_queried": len(np.intersect1d(merged["ids"][picks], queried_ids)) / max(k, 1)}
        if true_labels is not None:
            entry["error_rate"] = float(np.mean(merged["predicted"][picks] != true_labels[picks]))
            entry["histogram"] = np.bincount(true_labels[picks], minlength=num_classes).tolist()
        result[column.removeprefix("score_")] = entry
    return result
