"""Hand-made run folders with known numbers, laid out as `tidal-dist run` writes them
(config.yaml, cycles/cycle_K/{metrics.json, labeled.npz, td/...}), for the report's tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from tidal_dist.config import Config

INITIAL, BUDGET = 100, 50


def write_config(run_dir: Path, strategy: str, seed: int, **overrides) -> None:
    """The resolved config of a run; overrides as {"train.epochs": 20, "train.objective": "tidal"}
    (keys this version does not know are kept, as a newer version's run folder would have)."""
    cfg = Config().to_dict()
    cfg["data"]["root"] = "data/shards/toy"
    cfg["al"].update(strategy=strategy, initial=INITIAL, budget=BUDGET)
    cfg["run"].update(seed=seed, dir=str(run_dir))
    for key, value in overrides.items():
        section, name = key.split(".")
        cfg[section][name] = value
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def write_cycle(run_dir: Path, k: int, accuracy: float, *, strategy: str, seed: int,
                classes: int = 3, queried_histogram: list[int] | None = None,
                seconds: dict | None = None, module_analysis: dict | None = None,
                score_ablation: dict | None = None, objective: str = "tidal",
                train: list[dict] | None = None, val_accuracy: float | None = None,
                extra: dict | None = None) -> Path:
    d = run_dir / "cycles" / f"cycle_{k:04d}"
    d.mkdir(parents=True, exist_ok=True)
    labeled = INITIAL + k * BUDGET
    metrics = {
        "cycle": k, "labeled": labeled, "accuracy": accuracy, "test_samples": 1000,
        "candidates": 500, "queried": BUDGET, "strategy": strategy, "objective": objective,
        "subset_seed": seed, "run_seed": seed, "world_size": 1,
        "labeled_histogram": [labeled // classes + (1 if c < labeled % classes else 0)
                              for c in range(classes)],
        "queried_histogram": queried_histogram or [BUDGET - 2 * (BUDGET // 3)] + [BUDGET // 3] * 2,
        "seconds": seconds or {"train": 10.0, "evaluate": 1.0, "score": 2.0, "select": 0.1,
                               "commit": 0.2},
        "train": train or [{"loss": 1.0, "ce": 0.9, "kl": 0.1, "samples": labeled, "seconds": 1.0}],
    }
    if val_accuracy is not None:
        metrics["val_accuracy"] = val_accuracy
    if module_analysis is not None:
        metrics["module_analysis"] = module_analysis
    if score_ablation is not None:
        metrics["score_ablation"] = score_ablation
    metrics.update(extra or {})
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def make_run(root: Path, strategy: str, seed: int, accuracies: list[float], config: dict | None = None,
             **cycle_kwargs) -> Path:
    run_dir = root / strategy / f"seed_{seed}"
    write_config(run_dir, strategy, seed, **(config or {}))
    for k, acc in enumerate(accuracies):
        write_cycle(run_dir, k, acc, strategy=strategy, seed=seed, **cycle_kwargs)
    return run_dir


def write_td(cycle_dir: Path, ids: np.ndarray, labels: np.ndarray, epoch_probs: np.ndarray,
             stats: bool = True, epochs: bool = True) -> None:
    """labeled.npz and td/ for a cycle, from per-epoch probabilities [E, N, C]: the TD buffers
    (sum, count), the per-sample statistics (stats.npy) and/or the per-epoch records."""
    td = cycle_dir / "td"
    td.mkdir(parents=True, exist_ok=True)
    np.savez(cycle_dir / "labeled.npz", ids=ids, labels=labels)
    np.save(td / "ids.npy", ids)
    e = len(epoch_probs)
    np.save(td / "sum.npy", epoch_probs.sum(axis=0).astype(np.float32))
    np.save(td / "count.npy", np.full(len(ids), e, dtype=np.int32))
    if stats:
        p_gold = epoch_probs[:, np.arange(len(ids)), labels].astype(np.float64)  # [E, N]
        correct = (epoch_probs.argmax(axis=2) == labels[None, :]).sum(axis=0)
        np.save(td / "stats.npy", np.stack([p_gold.sum(0), (p_gold**2).sum(0), correct], axis=1))
    if epochs:
        (td / "epochs").mkdir(exist_ok=True)
        for i, p in enumerate(epoch_probs):
            np.save(td / "epochs" / f"probs_e{i:04d}.npy", p.astype(np.float32))


def random_probs(epochs: int, n: int, classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(epochs, n, classes)) * 2.0
    p = np.exp(logits - logits.max(axis=2, keepdims=True))
    return (p / p.sum(axis=2, keepdims=True)).astype(np.float32)


def check_png(path: Path) -> None:
    """The file decodes as an image with something drawn on it (not one flat colour)."""
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 100 and image.shape[1] > 100, path
    colors = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colors) > 20, f"{path} looks blank ({len(colors)} colours)"
    assert (image.min(axis=2) < 200).mean() > 0.01, f"{path}: hardly anything drawn"
