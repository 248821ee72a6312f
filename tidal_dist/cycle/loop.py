"""The active-learning loop: train -> evaluate -> score -> select -> label -> commit, per cycle.

Run directory:
    config.yaml                  the resolved config (a run dir refuses a different one)
    cycles/cycle_0003/           committed cycle: labeled.npz (ids, labels trained on),
                                 queried.npz (ids, uncertainty, reported score), metrics.json,
                                 td/ (ids, sum, count, stats), model.pt
    work/cycle_0004/             the cycle in progress: td/, ckpt/, trained/, scores/
    queries/cycle_K.csv          file oracle: what to label;  labels/cycle_K.csv: the answers
    results.json, results.md, results.png   the summary and the accuracy curve, after every cycle

A cycle becomes visible in one rename (cycles/.cycle_K.partial -> cycles/cycle_K); everything
else is derived from committed cycles, so a run killed anywhere restarts from the last one (and
inside a cycle from its newest epoch checkpoint, or its finished training). The labeled set of
cycle K+1 is cycle K's labeled set plus cycle K's queries, labeled by the oracle.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from tidal_dist.config import Config, bind_run_dir, candidate_seed, flatten
from tidal_dist.cycle.analysis import score_ablation
from tidal_dist.cycle.initial import choose_initial_set
from tidal_dist.cycle.oracle import INITIAL, label_queries
from tidal_dist.cycle.pool import initial_labeled_set, pool_ids, validation_ids
from tidal_dist.cycle.queries import ask_person, hand_out, predicted_for
from tidal_dist.cycle.score import draw_candidates, logged_scores, save_scores, score_labeled, score_pool
from tidal_dist.data.manifest import load_labels
from tidal_dist.job import faults, outcome, preemption
from tidal_dist.job.fsutil import atomic_write, atomic_write_json, fsync_dir
from tidal_dist.selection import top_k
from tidal_dist.strategies import ScoreContext, SelectionInputs, Strategy, get_strategy
from tidal_dist.telemetry import Telemetry, check_trackers
from tidal_dist.training.evaluate import evaluate
from tidal_dist.training.runtime import seed_everything
from tidal_dist.training.session import Session, build_session
from tidal_dist.training.train import train_cycle

log = logging.getLogger("tidal_dist")


def cycle_dir(run_dir: Path, k: int) -> Path:
    return run_dir / "cycles" / f"cycle_{k:04d}"


def committed_cycles(run_dir: Path) -> int:
    """Number of committed cycles; they are 0..n-1 (a gap would mean a foreign edit)."""
    n = 0
    while cycle_dir(run_dir, n).is_dir():
        n += 1
    return n


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def labeled_set_for(session: Session, run_dir: Path, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) to train on in cycle k, derived from committed state only (and, with a
    person as oracle, the labels they have returned)."""
    cfg, manifest = session.cfg, session.manifest
    if k == 0:
        ids, scores = choose_initial_set(session, run_dir)
        if cfg.al.oracle == "simulated":
            labels = load_labels(cfg.data.root, "pool")[ids - manifest.split("pool").first_id]
            return ids, labels.astype(np.int64)
        return ids, ask_person(session, run_dir, INITIAL, ids, scores, None)
    prev = cycle_dir(run_dir, k - 1)
    labeled, queried = load_npz(prev / "labeled.npz"), load_npz(prev / "queried.npz")
    if cfg.al.oracle == "simulated":
        new_labels = label_queries(cfg.al.oracle, run_dir, k - 1, manifest, cfg.data.root,
                                   queried["ids"])
    else:
        predicted = predicted_for(load_npz(prev / "scores.npz"), queried["ids"])
        new_labels = ask_person(session, run_dir, k - 1, queried["ids"], queried["reported"],
                                predicted)
    ids = np.concatenate([labeled["ids"], queried["ids"]])
    labels = np.concatenate([labeled["labels"], new_labels])
    order = np.argsort(ids)
    return ids[order], labels[order]


def histogram(labels: np.ndarray, num_classes: int) -> list[int]:
    """Per-class counts of the known labels (an unlabeled pool's -1s are not a class)."""
    return np.bincount(labels[labels >= 0], minlength=num_classes).tolist()


def _save_model(path: Path, model: torch.nn.Module) -> None:
    atomic_write(path, lambda f: torch.save(model.state_dict(), f))


def _load_model(path: Path, model: torch.nn.Module) -> None:
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def train_and_evaluate(session: Session, run_dir: Path, work: Path, k: int, ids: np.ndarray,
                       labels: np.ndarray, measure=None) -> dict:
    """Phase 1 of a cycle. work/trained/ marks its progress: train.json once training is done
    (then model.pt holds the trained weights), metrics.json once evaluation is done too."""
    acc = session.accelerator
    trained = work / "trained"
    if (trained / "metrics.json").exists():
        _load_model(trained / "model.pt", acc.unwrap_model(session.model))
        if acc.is_main_process:
            log.info("cycle %d: training and evaluation finished before the restart (%s); "
                     "resuming at scoring", k, trained)
        return json.loads((trained / "metrics.json").read_text())
    if (trained / "train.json").exists():
        _load_model(trained / "model.pt", acc.unwrap_model(session.model))
        out = json.loads((trained / "train.json").read_text())
        if acc.is_main_process:
            log.info("cycle %d: training finished before the restart (%s); resuming at evaluation",
                     k, trained)
    else:
        t0 = time.time()
        result = train_cycle(session, ids, labels, work, cycle=k, measure=measure)
        out = {"train": [e.to_dict() for e in result.epochs], "seconds": {"train": time.time() - t0},
               **result.notes}
        if measure is not None:
            out.update(measured_td_cost(measure, out["seconds"]))
            measure.save(trained / "measured_td")  # rank 0; before train.json, the marker
        if acc.is_main_process:
            _save_model(trained / "model.pt", acc.unwrap_model(session.model))
            atomic_write_json(trained / "train.json", out)  # after model.pt: the phase marker
        acc.wait_for_everyone()
    t1 = time.time()
    metrics = evaluate(session)
    out.update({"accuracy": metrics["accuracy"], "test_samples": metrics["num_samples"]})
    # per-class test counts: the report's balanced and minority-class accuracy (None without a
    # labeled test split)
    out.update(test_per_class_correct=metrics.get("per_class_correct"),
               test_per_class_seen=metrics.get("per_class_seen"))
    if session.cfg.al.val_size:
        val = evaluate(session, "pool", ids=validation_ids(session.cfg))
        out.update(val_accuracy=val["accuracy"], val_samples=val["num_samples"])
    out["seconds"]["evaluate"] = time.time() - t1
    known = {} if metrics["accuracy"] is None else {"accuracy": metrics["accuracy"]}
    session.telemetry.phase(k, "evaluate", out["seconds"]["evaluate"], metrics["num_samples"],
                            **known)
    if acc.is_main_process:
        atomic_write_json(trained / "metrics.json", out)  # last: the phase marker
    acc.wait_for_everyone()
    return out


def candidate_measurer(session: Session, labeled: np.ndarray, k: int):
    """For a strategy that scores measured TD: the measurer of this cycle's candidates (the same
    draw scoring makes after training), else None."""
    from tidal_dist.cycle.score import reads_measured_td
    from tidal_dist.training.measure import CandidateMeasurer

    cfg = session.cfg
    if not reads_measured_td(get_strategy(cfg.al.strategy)):
        return None
    all_ids, _ = pool_ids(cfg)
    unlabeled = np.setdiff1d(all_ids, labeled, assume_unique=True)
    candidates = draw_candidates(unlabeled, cfg.al.subset_size, candidate_seed(cfg), k)
    return CandidateMeasurer(session, candidates, cfg.al.td_measure_every)


def measured_td_cost(measure, seconds: dict) -> dict:
    """Move the measurement passes' seconds out of training's, and the cycle's record of them:
    seconds, ratio to the cycle's training proper, number of measurements."""
    spent = measure.seconds
    seconds["train"] = max(seconds["train"] - spent, 0.0)
    seconds["measure_td"] = spent
    return {"measured_td": {"seconds": spent, "measurements": measure.measurements,
                            "every": measure.every, "path": measure.path,
                            "ratio_to_training": spent / seconds["train"] if seconds["train"] else None}}


def run_cycle(session: Session, run_dir: Path, k: int) -> None:
    cfg, acc, manifest = session.cfg, session.accelerator, session.manifest
    work = run_dir / "work" / f"cycle_{k:04d}"
    ids, labels = labeled_set_for(session, run_dir, k)
    measure = candidate_measurer(session, ids, k)  # None unless the strategy reads measured TD
    seed_everything(cfg.run.seed * 1_000_003 + k, cfg.run.deterministic)  # resume == no resume
    if k > 0:
        _load_model(cycle_dir(run_dir, k - 1) / "model.pt", acc.unwrap_model(session.model))
    if acc.is_main_process:
        log.info("cycle %d/%d: %d labeled", k + 1, cfg.al.cycles, len(ids))
    metrics = train_and_evaluate(session, run_dir, work, k, ids, labels, measure)

    t0 = time.time()
    all_ids, _ = pool_ids(cfg)
    unlabeled = np.setdiff1d(all_ids, ids, assume_unique=True)
    subset_seed = candidate_seed(cfg)
    candidates = draw_candidates(unlabeled, cfg.al.subset_size, subset_seed, k)
    strategy = get_strategy(cfg.al.strategy)
    ctx = ScoreContext(cycle_seed=subset_seed * 1_000_003 + k, al=cfg.al)
    network = acc.unwrap_model(session.model)
    logged = logged_scores(network) if cfg.al.log_scores else []
    merged = score_pool(session, candidates, strategy, work / "scores", ctx, logged,
                        previous_model=cycle_dir(run_dir, k - 1) / "model.pt" if k > 0 else None,
                        measured=work / "trained" / "measured_td")
    labeled_kept, module = score_labeled(session, ids, work / "scores", strategy.keeps_labeled,
                                         work / "td" if session.records_td else None)
    faults.maybe_crash("after_score", k)
    t1 = time.time()
    session.telemetry.phase(k, "score", t1 - t0, len(candidates), unit="candidates")
    if acc.is_main_process:
        queried = select(strategy, merged, labeled_kept, min(cfg.al.budget, len(candidates)),
                         ctx, acc.device)
        first = manifest.split("pool").first_id
        simulated = cfg.al.oracle == "simulated"  # a person's pool may have no stored labels
        pool_labels = load_labels(cfg.data.root, "pool") if simulated else None
        metrics.update({
            "cycle": k, "labeled": len(ids), "candidates": len(candidates),
            "queried": len(queried["ids"]), "unlabeled": len(unlabeled),
            "strategy": strategy.name, "objective": session.objective.name,
            "subset_seed": subset_seed, "run_seed": cfg.run.seed,
            "world_size": acc.num_processes,
            "labeled_histogram": histogram(labels, manifest.num_classes),
        })
        # The shards' classes of the queries (what the simulated oracle will say); None where
        # a person labels or the stored labels are incomplete: those classes are unknown.
        metrics["queried_histogram"] = (
            histogram(pool_labels[queried["ids"] - first], manifest.num_classes)
            if simulated and manifest.pool_fully_labeled else None)
        if module is not None:
            metrics["module_analysis"] = module
        if logged:
            truth = pool_labels[merged["ids"] - first] if simulated else None
            metrics["score_ablation"] = score_ablation(merged, queried["ids"], cfg.al.budget, truth,
                                                       manifest.num_classes)
        metrics["seconds"].update({"score": t1 - t0, "select": time.time() - t1})
        commit_cycle(run_dir, work, k, ids, labels, queried, merged, metrics)
        if not simulated:  # the files at once; Label Studio's tasks when the next cycle asks
            hand_out(cfg, run_dir, k, manifest, queried["ids"], queried["reported"],
                     predicted_for(merged, queried["ids"]), push=False)
        session.telemetry.cycle(k, cfg.al.cycles, metrics, cycle_dir(run_dir, k))
    acc.wait_for_everyone()
    if acc.is_main_process:
        shutil.rmtree(work, ignore_errors=True)
        write_results(run_dir)


def select(strategy: Strategy, merged: dict, labeled_kept: dict | None, k: int,
           ctx: ScoreContext, device: torch.device) -> dict[str, np.ndarray]:
    """Rank 0: the queried ids with their uncertainty and reported value, in pick order."""
    if strategy.set_based:
        choice = strategy.select(SelectionInputs(
            ids=merged["ids"], uncertainty=merged["uncertainty"],
            kept={name: merged[name] for name in strategy.keeps}, labeled=labeled_kept or {},
            k=k, seed=ctx.cycle_seed, device=device, al=ctx.al))
        picked, reported = np.asarray(choice.indices, dtype=np.int64), choice.reported
    else:
        picked = top_k(merged["ids"], merged["uncertainty"], k)
        reported = merged["reported"][picked]
    return {"ids": merged["ids"][picked], "uncertainty": merged["uncertainty"][picked],
            "reported": np.asarray(reported, dtype=np.float64)}


def commit_cycle(run_dir: Path, work: Path, k: int, ids: np.ndarray, labels: np.ndarray,
                 queried: dict, merged: dict, metrics: dict) -> None:
    """Rank 0: write the cycle into a temporary folder, then make it visible with one rename."""
    t0 = time.time()
    final = cycle_dir(run_dir, k)
    tmp = final.parent / f".{final.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_write(tmp / "labeled.npz", lambda f: np.savez(f, ids=ids, labels=labels))
    atomic_write(tmp / "queried.npz", lambda f: np.savez(f, **queried))
    save_scores(tmp / "scores.npz", merged)
    shutil.copytree(work / "td", tmp / "td", ignore=shutil.ignore_patterns("visit*"))
    if (work / "trained" / "measured_td" / "ids.npy").exists():
        shutil.copytree(work / "trained" / "measured_td", tmp / "measured_td")
    shutil.copyfile(work / "trained" / "model.pt", tmp / "model.pt")
    faults.maybe_crash("during_commit", k)
    metrics["seconds"]["commit"] = time.time() - t0
    atomic_write_json(tmp / "metrics.json", metrics)
    for name in ("td/ids.npy", "td/sum.npy", "td/count.npy", "td/stats.npy", "model.pt"):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(tmp)
    tmp.rename(final)
    fsync_dir(final.parent)


def write_results(run_dir: Path) -> dict:
    """results.json + results.md from the committed cycles (rank 0)."""
    rows = []
    for k in range(committed_cycles(run_dir)):
        m = json.loads((cycle_dir(run_dir, k) / "metrics.json").read_text())
        rows.append({"cycle": k, "labeled": m["labeled"], "accuracy": m["accuracy"],
                     "queried": m["queried"], "seconds": m["seconds"]})
    summary = {"run_dir": str(run_dir), "cycles": rows}
    atomic_write_json(run_dir / "results.json", summary)
    lines = ["| cycle | labeled | test accuracy | train s | score s |", "|---|---|---|---|---|"]
    lines += [f"| {r['cycle']} | {r['labeled']} | {accuracy_text(r['accuracy'])} | "
              f"{r['seconds']['train']:.1f} | {r['seconds']['score']:.1f} |" for r in rows]
    atomic_write(run_dir / "results.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    if rows:
        plot_accuracy(run_dir / "results.png", rows)
    return summary


def accuracy_text(accuracy: float | None) -> str:
    """None: the dataset has no labeled evaluation split."""
    return "unknown (no labeled test split)" if accuracy is None else f"{accuracy:.4f}"


def plot_accuracy(path: Path, rows: list[dict]) -> None:
    """Test accuracy against the number of labels: the active-learning curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=150)
    known = [r for r in rows if r["accuracy"] is not None]
    ax.plot([r["labeled"] for r in known], [100 * r["accuracy"] for r in known], marker="o")
    if not known:
        ax.set_title("test accuracy unknown: no labeled test split", fontsize=8)
    ax.set_xlabel("labeled samples")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def pool_exhausted(run_dir: Path, k: int) -> bool:
    """Cycle k-1 found no unlabeled sample left to query: it trained on the whole pool."""
    if k == 0:
        return False
    metrics = json.loads((cycle_dir(run_dir, k - 1) / "metrics.json").read_text())
    return metrics.get("candidates", 1) == 0


def run_main(cfg: Config, end_training: bool = True) -> int:
    """`tidal-dist run`: start, or continue, the experiment in cfg.run.dir. Stops (LabelsPending,
    preemption.Preempted) propagate to lifecycle.run_command, which records the outcome. A sweep
    running several runs in the same processes passes end_training=False to keep the process
    group."""
    check_trackers(cfg.run.trackers)
    session = build_session(cfg)
    acc = session.accelerator
    run_dir = bind_run_dir(cfg, write=acc.is_main_process)
    acc.wait_for_everyone()
    outcome.running()
    if acc.is_main_process:
        for leftover in (run_dir / "cycles").glob(".*.partial"):
            shutil.rmtree(leftover)  # a commit killed before its rename: redone below
    acc.wait_for_everyone()
    done = committed_cycles(run_dir)
    if acc.is_main_process:
        for k in range(done):  # work folders of cycles whose commit finished but cleanup didn't
            shutil.rmtree(run_dir / "work" / f"cycle_{k:04d}", ignore_errors=True)
    if done and acc.is_main_process:
        log.info("resuming %s: %d of %d cycles committed", run_dir, done, cfg.al.cycles)
    session.telemetry = Telemetry.open(run_dir, acc.is_main_process, cfg.run.trackers, flatten(cfg),
                                       committed_cycles=done, world_size=acc.num_processes)
    try:
        for k in range(done, cfg.al.cycles):
            if pool_exhausted(run_dir, k):
                message = (f"the pool ran out: cycle {k - 1} trained on every pool sample and had "
                           f"nothing left to query; the run ends after {k} of "
                           f"al.cycles={cfg.al.cycles} cycles")
                if acc.is_main_process:
                    print(f"tidal-dist run: {message}", flush=True)
                outcome.note(message)
                break
            preemption.raise_if_agreed(acc.device, f"the start of cycle {k}")
            run_cycle(session, run_dir, k)
    finally:
        session.telemetry.close()
    if acc.is_main_process:
        if (run_dir / "work").is_dir() and not any((run_dir / "work").iterdir()):
            (run_dir / "work").rmdir()
        summary = write_results(run_dir)
        last = summary["cycles"][-1] if summary["cycles"] else None
        if last:
            message = (f"{len(summary['cycles'])} cycles done; final accuracy "
                       f"{accuracy_text(last['accuracy'])} with {last['labeled']} labels")
            print(f"tidal-dist run: {message}; results in {run_dir}/results.md and "
                  f"{run_dir}/cycles/", flush=True)
            outcome.note(message)
    acc.wait_for_everyone()
    if end_training:
        acc.end_training()
    return 0


def train_main(cfg: Config) -> int:
    """`tidal-dist train`: one cycle on the initial labeled set, then test accuracy."""
    session = build_session(cfg)
    acc = session.accelerator
    run_dir = bind_run_dir(cfg, write=acc.is_main_process)
    acc.wait_for_everyone()
    outcome.running()
    labeled = initial_labeled_set(cfg)
    labels = load_labels(cfg.data.root, "pool")[labeled - session.manifest.split("pool").first_id]
    result = train_cycle(session, labeled, labels, run_dir / "train", cycle=0)
    metrics = evaluate(session)
    if acc.is_main_process:
        atomic_write_json(run_dir / "train" / "metrics.json", {
            "labeled": len(labeled), "world_size": acc.num_processes, **metrics,
            "epochs": [e.to_dict() for e in result.epochs], "seconds": result.seconds})
        log.info("test accuracy %s on %d samples; results in %s", accuracy_text(metrics["accuracy"]),
                 metrics["num_samples"], run_dir / "train")
    acc.wait_for_everyone()
    acc.end_training()
    return 0
