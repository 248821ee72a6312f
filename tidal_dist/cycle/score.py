"""Sharded scoring: the candidates (and, where needed, the labeled set) through the network in eval
mode, no augmentation, each rank its own share (inference.predict: rank x loader worker, exactly
once), written to per-rank part files (parts.py). No collective runs inside the loops, so ranks may
see different numbers of batches. One barrier; rank 0 merges and checks that every id was scored
exactly once.

Per candidate the part files hold what the strategy declares (strategies/base.py): its per-batch
uncertainty and reported value, the vectors a set-based strategy selects from (`keeps`: class
logits, TD logits or embeddings, as 2-D memmaps), the classifier's prediction, and with
al.log_scores every cheap per-sample score, so one run yields the classifier-vs-module ablation.
The labeled-set pass keeps what Core-set needs (`keeps_labeled`) and measures the TD module
(analysis.module_kl_sums) against the recorded training dynamics.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch

from tidal_dist.cycle.analysis import module_kl_sums
from tidal_dist.cycle.parts import Field, PartWriter, merge_parts
from tidal_dist.dynamics.buffer import TDBuffer, rows_of
from tidal_dist.dynamics.measured import load_measured
from tidal_dist.job import preemption
from tidal_dist.job.fsutil import atomic_write
from tidal_dist.models.network import available_outputs
from tidal_dist.strategies import Outputs, ScoreContext, Strategy, registry
from tidal_dist.telemetry.progress import progress
from tidal_dist.training.inference import predict

SCALARS = {"uncertainty": Field(np.float64), "reported": Field(np.float64),
           "predicted": Field(np.int64)}


def draw_candidates(unlabeled: np.ndarray, subset_size: int | str, subset_seed: int,
                    cycle: int) -> np.ndarray:
    """The cycle's candidates: a seeded random subset of the unlabeled pool, or all of it.
    Seeded by (subset seed, cycle): config.candidate_seed, i.e. al.subset_seed, or run.seed when
    it is unset (tidal-method.md step 4)."""
    unlabeled = np.sort(np.asarray(unlabeled, dtype=np.int64))
    if subset_size == "all" or subset_size >= len(unlabeled):
        return unlabeled
    rng = np.random.default_rng([subset_seed, cycle])
    return np.sort(rng.choice(unlabeled, size=int(subset_size), replace=False))


def logged_scores(network: torch.nn.Module) -> list[Strategy]:
    """Every cheap per-sample strategy this network can score (for al.log_scores)."""
    have = available_outputs(network)
    return [s for _, s in sorted(registry().items()) if s.cheap and s.needs <= have]


def _vector_fields(session, names: frozenset[str]) -> dict[str, Field]:
    network = session.accelerator.unwrap_model(session.model)
    widths = {"logits": session.num_classes, "td_logits": session.num_classes,
              "embedding": getattr(getattr(network, "backbone", None), "embedding_dim", None)}
    return {name: Field(np.float32, widths[name]) for name in sorted(names)}


def _capacity(session, n: int) -> int:
    """Upper bound of one rank's share: contiguous chunks of ceil(n / (W*K)) per loader worker."""
    workers = max(session.cfg.data.num_workers, 1)
    return math.ceil(n / (session.accelerator.num_processes * workers)) * workers


def _outputs(session, ids: torch.Tensor, out: dict[str, torch.Tensor]) -> Outputs:
    backbone = getattr(session.accelerator.unwrap_model(session.model), "backbone", None)
    return Outputs(ids=ids, logits=out["logits"], td_logits=out.get("td_logits"),
                   embedding=out.get("embedding"), loss_pred=out.get("loss_pred"),
                   classifier=getattr(backbone, "classifier", None),
                   reference_logits=out.get("reference_logits"),
                   measured_mean=out.get("measured_mean"), measured_votes=out.get("measured_votes"),
                   measured_count=out.get("measured_count"))


def reads_measured_td(strategy: Strategy) -> bool:
    return "measured_td" in strategy.needs


class MeasuredRows:
    """The candidates' measured TD (a snapshot of dynamics.measured.MeasuredTD), looked up per
    scored batch as the measured_* outputs."""

    def __init__(self, folder: Path):
        snap = load_measured(folder)
        self.ids, self.sum, self.votes, self.count = (snap["ids"], snap["sum"], snap["votes"],
                                                      snap["count"])

    def outputs(self, ids: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        rows = rows_of(self.ids, ids, "the candidates' measured TD")
        count = np.asarray(self.count[rows]).astype(np.float64)
        mean = np.asarray(self.sum[rows]) / np.maximum(count, 1)[:, None]
        return {"measured_mean": torch.from_numpy(mean).to(device),
                "measured_votes": torch.from_numpy(np.asarray(self.votes[rows])).to(device),
                "measured_count": torch.from_numpy(np.asarray(self.count[rows])).to(device)}

def reference_network(session, weights: Path | None, seed: int) -> torch.nn.Module:
    """A copy of the network with earlier weights, for strategies that need reference_logits
    (TOD): `weights` (the previous cycle's committed model.pt, the same file on every rank), or,
    without one (cycle 0), its layers' parameters re-drawn by reset_parameters under `seed`, so
    every rank holds the same untrained network. Eval mode, on the network's device."""
    network = copy.deepcopy(session.accelerator.unwrap_model(session.model))
    if weights is not None:
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in network.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return network.eval()


def score_pool(session, candidates: np.ndarray, strategy: Strategy, out_dir: Path,
               ctx: ScoreContext, logged: list[Strategy] = (),
               previous_model: Path | None = None,
               measured: Path | None = None) -> dict[str, np.ndarray] | None:
    """Score `candidates` on every rank; rank 0 returns the merged fields in ascending id order
    (ids, uncertainty, reported, predicted, score_<name> per logged strategy, and the strategy's
    kept vectors as memmaps); other ranks return None. `previous_model`: the weights a strategy
    reading reference_logits compares with (none at cycle 0: see reference_network); `measured`:
    the candidates' measured-TD snapshot, for strategies that read measured_td."""
    acc = session.accelerator
    reference = None
    if "reference_logits" in strategy.needs:
        reference = reference_network(session, previous_model, ctx.cycle_seed)
    measured_rows = MeasuredRows(measured) if reads_measured_td(strategy) else None
    fields = {**SCALARS, **{f"score_{s.name}": Field(np.float64) for s in logged},
              **_vector_fields(session, strategy.keeps)}
    writer = PartWriter(out_dir, "score", acc.process_index, _capacity(session, len(candidates)),
                        fields)
    bar = progress(total=len(candidates), desc="scoring", unit="candidates",
                   enabled=acc.is_main_process)
    for ids, _labels, out in predict(session, "pool", session.cfg.al.score_batch_size, ids=candidates,
                                     reference=reference):
        if measured_rows is not None:
            out.update(measured_rows.outputs(ids.numpy(), acc.device))
        outputs = _outputs(session, ids, out)
        u = strategy.uncertainty(outputs, ctx)
        rows = {"ids": ids.numpy(), "uncertainty": u.cpu().numpy(),
                "reported": strategy.reported(u).cpu().numpy(),
                "predicted": out["logits"].argmax(dim=1).cpu().numpy()}
        for s in logged:
            rows[f"score_{s.name}"] = s.uncertainty(outputs, ctx).cpu().numpy()
        for name in strategy.keeps:
            rows[name] = out[name].cpu().numpy()
        writer.append(rows)
        bar.update(len(ids) * acc.num_processes)  # an estimate of global progress, from rank 0's share
    bar.close()
    writer.close()
    # A stop request ends the loop early on the rank that got it; scoring restarts on resume.
    preemption.raise_if_agreed(acc.device, "scoring")
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return None
    return merge_parts(out_dir, "score", acc.num_processes, candidates, fields)


def score_labeled(session, labeled_ids: np.ndarray, out_dir: Path, keeps: frozenset[str],
                  td_dir: Path | None) -> tuple[dict[str, np.ndarray] | None, dict | None]:
    """The labeled set through the network: rank 0 gets the `keeps` vectors (merged, id order) and
    every rank the module analysis (mean KL(actual TD || predicted TD) and KL(actual TD ||
    classifier softmax) over the labeled set; None without TD buffers)."""
    acc = session.accelerator
    fields = _vector_fields(session, keeps)
    writer = PartWriter(out_dir, "labeled", acc.process_index, _capacity(session, len(labeled_ids)),
                        fields) if keeps else None
    td = TDBuffer(td_dir) if td_dir is not None else None
    if writer is None and td is None:
        return None, None
    sums = torch.zeros(3, dtype=torch.float64, device=acc.device)  # KL module, KL classifier, n
    for ids, _labels, out in predict(session, "pool", session.cfg.al.score_batch_size,
                                     ids=labeled_ids):
        if writer is not None:
            writer.append({"ids": ids.numpy(), **{name: out[name].cpu().numpy() for name in keeps}})
        if td is not None and "td_logits" in out:
            rows = td.rows(ids.numpy())
            actual = torch.from_numpy(np.asarray(td.sum[rows]) /
                                      np.maximum(np.asarray(td.count[rows]), 1)[:, None])
            sums += module_kl_sums(actual.to(acc.device), out["td_logits"], out["logits"])
    if writer is not None:
        writer.close()
    sums = acc.reduce(sums, reduction="sum")
    analysis = None
    if td is not None and sums[2] > 0:
        analysis = {"kl_td_module": float(sums[0] / sums[2]),
                    "kl_td_classifier": float(sums[1] / sums[2])}
    acc.wait_for_everyone()
    if not acc.is_main_process or not keeps:
        return None, analysis
    return merge_parts(out_dir, "labeled", acc.num_processes, labeled_ids, fields), analysis


def save_scores(path: Path, merged: dict[str, np.ndarray]) -> None:
    """The scalar fields (one value per candidate) as one .npz; kept vectors are not saved."""
    atomic_write(path, lambda f: np.savez(f, **{k: v for k, v in merged.items() if v.ndim == 1}))
