"""Run under torchrun by tests/training/test_train.py and tests/test_evaluate.py.

usage: train_worker.py OUT MODE [key=value ...]
  MODE standin: train one cycle with tests/standins.LinearTiDAL (lr 0), then evaluate
  MODE train:   train one cycle with the configured model, then evaluate
  MODE eval:    evaluate the freshly initialised model only
Rank 0 writes OUT/result.json; every rank writes OUT/params.rank{R}.pt.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the stand-ins
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's own tidal_dist

from tidal_dist.config import load_config  # noqa: E402
from tidal_dist.cycle.pool import initial_labeled_set  # noqa: E402
from tidal_dist.data.manifest import load_labels, load_manifest  # noqa: E402
from tidal_dist.training.evaluate import evaluate  # noqa: E402
from tidal_dist.training.session import build_session
from tidal_dist.training.train import train_cycle  # noqa: E402


def main() -> None:
    out, mode, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    cfg = load_config(None, overrides)
    manifest = load_manifest(cfg.data.root)
    model = None
    if mode == "standin":
        from standins import LinearTiDAL

        channels = 1 if manifest.mode == "L" else 3
        h, w = manifest.image_size
        model = LinearTiDAL(channels * h * w, manifest.num_classes)
    session = build_session(cfg, model=model)
    acc = session.accelerator
    result = {"world_size": acc.num_processes, "distributed_type": str(acc.distributed_type)}
    if mode in ("standin", "train"):
        ids = initial_labeled_set(cfg)
        labels = load_labels(cfg.data.root, "pool")[ids - manifest.split("pool").first_id]
        cycle = train_cycle(session, ids, labels, out / "work", cycle=0)
        result.update(engine=cycle.engine, losses=[e.loss for e in cycle.epochs],
                      samples=[e.samples for e in cycle.epochs], labeled=len(ids))
    result["eval"] = evaluate(session)
    state = acc.unwrap_model(session.model).state_dict()
    torch.save({k: v.detach().float().cpu() for k, v in state.items()},
               out / f"params.rank{acc.process_index}.pt")
    if acc.is_main_process:
        (out / "result.json").write_text(json.dumps(result))
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main()
