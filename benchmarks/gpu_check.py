"""The GPU check: the figures a GPU box owes, measured in one run of a few minutes.

    bash benchmarks/gpu_check.sh WHEEL_DIR OUT_DIR          # on the GPU box (see docs/gpu-check.md)
    python benchmarks/gpu_check.py --out OUT_DIR [--cpu-dry-run]

On synthetic CIFAR-shaped data (RGB 32x32 shards, crop_flip) and a synthetic JPEG image folder:
  1. ResNet-18 (CIFAR) TiDAL training img/s through the real train_cycle, on the
     device-resident path and on the loader path
  2. on the device path, TiDAL step vs plain cross-entropy step (same batches): the TD overhead
  3. evaluation / scoring img/s, and from 1-3 the projected time of one CIFAR-10 protocol trial
     (1k + 1k x 10 cycles, 200 epochs, 10k test, 10k candidate subsets)
  4. ResNet-50 224 px pool scoring img/s with GPU (nvJPEG) decode vs CPU (PIL) decode
  5. a 1-process end-to-end `tidal_dist run` of 2 short cycles under torchrun
Writes OUT_DIR/gpu_check.json and gpu_check.md. --cpu-dry-run: tiny sizes, small models, on the
CPU: checks that the script works, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

FULL = {"cifar_n": 10_000, "train_epochs": 4, "loader_epochs": 2, "backbone": "resnet18_cifar",
        "jpeg_n": 4_000, "jpeg_size": (300, 380), "score_size": 224, "score_backbone": "resnet50",
        "e2e": {"al.initial": 1000, "al.budget": 1000, "al.subset_size": 2000, "train.epochs": 2}}
DRY = {"cifar_n": 256, "train_epochs": 2, "loader_epochs": 2, "backbone": "small_cnn",
       "jpeg_n": 48, "jpeg_size": (60, 76), "score_size": 48, "score_backbone": "small_cnn",
       "e2e": {"al.initial": 40, "al.budget": 20, "al.subset_size": 60, "train.epochs": 1}}
PROTOCOL = {"labeled": [1000 * k for k in range(1, 11)], "epochs": 200, "test": 10_000,
            "subset": 10_000}


def config(root: Path, run_dir: Path, **kv):
    from tidal_dist.config import load_config

    base = {"data.root": str(root), "data.verify_shards": False, "run.dir": str(run_dir),
            "data.num_workers": min(8, os.cpu_count() or 1), "train.checkpoint_every": 0,
            "run.log_every": 10**9}
    base.update(kv)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def training(root: Path, work: Path, s: dict) -> dict:
    """1 and 2: train_cycle img/s per path; TiDAL vs CE step on the device path."""
    from tidal_dist.data.manifest import load_labels
    from tidal_dist.data.readers import epoch_assignment
    from tidal_dist.data.train_batches import DeviceBatches
    from tidal_dist.dynamics.state import DeviceTD, EpochLayout
    from tidal_dist.objectives.tidal import tidal_loss
    from tidal_dist.training.session import build_session
    from tidal_dist.training.train import train_cycle

    n = s["cifar_n"]
    ids = np.arange(n, dtype=np.int64)
    labels = load_labels(root, "pool")[ids]
    out, session = {}, None
    for path, epochs in (("device", s["train_epochs"]), ("loader", s["loader_epochs"])):
        cfg = config(root, work / "run", **{"model.backbone": s["backbone"],
                                            "train.epochs": epochs, "train.data_path": path})
        if session is None:
            session = build_session(cfg)
        session.cfg = cfg
        t0 = time.perf_counter()
        result = train_cycle(session, ids, labels, work / f"train_{path}", cycle=0)
        secs = [e.seconds for e in result.epochs]
        timed = secs[1:] if len(secs) > 1 else secs
        out[f"{path}_path"] = {"img_s": n / statistics.median(timed), "epoch_s": secs,
                               "cycle_s": time.perf_counter() - t0}

    # TiDAL step vs CE step on the same device-resident batches, interleaved epoch by epoch.
    cfg = session.cfg = config(root, work / "run", **{"model.backbone": s["backbone"]})
    acc, model = session.accelerator, session.model
    batch = cfg.train.batch_size
    batches = DeviceBatches(session, ids, batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    y_all = torch.from_numpy(labels).to(session.device)
    td = DeviceTD(ids, 10, EpochLayout(n, 0, 0, 1, batch), 0, session.device)
    times = {"ce": [], "tidal": []}
    for epoch in range(3):
        rank_ids, valid = epoch_assignment(ids, epoch, 0, 0, 1, batch_size=batch)
        v_all = torch.from_numpy(valid).to(session.device)
        y_epoch = y_all[torch.from_numpy(rank_ids).to(session.device)]
        for kind in ("ce", "tidal"):
            if session.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for step, x in enumerate(batches.epoch(rank_ids, valid, 0, epoch, 0, model)):
                lo = step * batch
                y, v = y_epoch[lo:lo + batch], v_all[lo:lo + batch]
                with acc.autocast():
                    if kind == "ce":
                        logits, _ = model.backbone(x)
                        loss = F.cross_entropy(logits.float(), y)
                    else:
                        net_out = model(x)
                        logits, td_logits = net_out["logits"], net_out["td_logits"]
                if kind == "tidal":
                    probs = F.softmax(logits.float().detach(), dim=1)
                    loss, _, _ = tidal_loss(logits, td_logits, y, td.targets(lo, probs), 1.0, valid=v)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if kind == "tidal":
                    td.record(lo, probs, y, v)
            if session.device.type == "cuda":
                torch.cuda.synchronize()
            times[kind].append(time.perf_counter() - t0)
        td.advance()
    ce, tidal = (statistics.median(times[k][1:]) for k in ("ce", "tidal"))
    out["td_overhead"] = {"ce_img_s": n / ce, "tidal_img_s": n / tidal, "ratio": tidal / ce}
    return out, session


def inference_rates(session, root: Path, s: dict) -> dict:
    """Evaluation and scoring img/s of the trained CIFAR model (3)."""
    from tidal_dist.data.manifest import load_manifest
    from tidal_dist.training.inference import predict

    rates = {}
    for name, split in (("eval", "test"), ("score", "pool")):
        n = load_manifest(root).split(split).num_samples
        t0 = time.perf_counter()
        for _ in predict(session, split, 256):
            pass
        if session.device.type == "cuda":
            torch.cuda.synchronize()
        rates[f"{name}_img_s"] = n / (time.perf_counter() - t0)
    return rates


def projection(train_img_s: float, eval_img_s: float, score_img_s: float) -> dict:
    train = sum(PROTOCOL["epochs"] * n for n in PROTOCOL["labeled"]) / train_img_s
    evaluate = len(PROTOCOL["labeled"]) * PROTOCOL["test"] / eval_img_s
    score = len(PROTOCOL["labeled"]) * PROTOCOL["subset"] / score_img_s
    return {"train_s": train, "eval_s": evaluate, "score_s": score,
            "total_s": train + evaluate + score}


def jpeg_scoring(work: Path, s: dict) -> dict:
    """4: ResNet-50 scoring img/s, GPU decode vs CPU decode, on a synthetic JPEG folder."""
    from benchmarks.make_image_folder import generate
    from tidal_dist.data.shards import prepare
    from tidal_dist.training.inference import predict
    from tidal_dist.training.session import build_session

    folder, root = work / "jpeg_folder", work / "jpeg_shards"
    per_class = max(1, s["jpeg_n"] // 10)
    generate(folder, 10, {"train": per_class, "val": 2}, s["jpeg_size"], log_every=0)
    prepare(f"imagefolder:{folder}", root, shard_size=1000, progress=False)
    out, session = {}, None
    decodes = ("tensor", "pil")
    for decode in decodes:
        cfg = config(root, work / "run_jpeg", **{"model.backbone": s["score_backbone"],
                                                 "data.eval_transform": "resize_center_crop",
                                                 "data.image_size": s["score_size"],
                                                 "data.decode": decode})
        if session is None:
            session = build_session(cfg)
        session.cfg = cfg
        best = None
        for _ in range(2):  # the first pass warms the page cache, cuDNN and nvJPEG
            t0 = time.perf_counter()
            n = sum(len(ids) for ids, *_ in predict(session, "pool", 256))
            if session.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        where = session.device.type if decode == "tensor" else "cpu"
        out[f"{decode}_decode"] = {"decode_on": where, "img_s": n / best, "n": n}
    out["ratio"] = out["tensor_decode"]["img_s"] / out["pil_decode"]["img_s"]
    return out


def end_to_end(root: Path, work: Path, s: dict) -> dict:
    """5: `python -m tidal_dist run`, 2 cycles, one process under torchrun."""
    run_dir = work / "e2e"
    args = {"data.root": root, "model.backbone": s["backbone"], "al.cycles": 2,
            "train.checkpoint_every": 0, "data.num_workers": min(8, os.cpu_count() or 1),
            "run.dir": run_dir, **s["e2e"]}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "tidal_dist", "run", *[f"{k}={v}" for k, v in args.items()]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = {"rc": proc.returncode, "seconds": time.perf_counter() - t0,
           "log_tail": (proc.stdout + proc.stderr)[-1500:]}
    if proc.returncode == 0:
        summary = json.loads((run_dir / "results.json").read_text())
        out["cycles"] = [{"labeled": c["labeled"], "accuracy": c["accuracy"]}
                         for c in summary["cycles"]]
        first = [line for line in proc.stderr.splitlines() if "process(es)" in line]
        out["launch"] = first[0].split("INFO ", 1)[-1] if first else ""
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cpu-dry-run", action="store_true")
    ap.add_argument("--work", default=None)
    args = ap.parse_args(argv)
    from benchmarks.common import write
    from tidal_dist.data.shards import prepare

    if not args.cpu_dry_run and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible (use --cpu-dry-run to test the script)")
    s = DRY if args.cpu_dry_run else FULL
    work = Path(args.work or tempfile.mkdtemp(prefix="tidal_gpu_check_"))
    t_start = time.perf_counter()
    root = work / "cifar_shaped"
    prepare(f"synthetic:{s['cifar_n']},10,32x32,3", root, shard_size=2500, progress=False)
    phases = {}
    t0 = time.perf_counter()
    train, session = training(root, work, s)
    phases["training_s"] = time.perf_counter() - t0
    rates = inference_rates(session, root, s)
    proj = projection(train["device_path"]["img_s"], rates["eval_img_s"], rates["score_img_s"])
    del session
    t0 = time.perf_counter()
    jpeg = jpeg_scoring(work, s)
    phases["jpeg_scoring_s"] = time.perf_counter() - t0
    e2e = end_to_end(root, work, s)
    phases["total_s"] = time.perf_counter() - t_start
    result = {"mode": "cpu-dry-run" if args.cpu_dry_run else "gpu", "sizes": s,
              "training": train, "inference": rates, "cifar10_trial_projection": proj,
              "jpeg_scoring": jpeg, "end_to_end": e2e, "phases": phases}
    tr, td = train, train["td_overhead"]
    rows = [
        [f"{s['backbone']} TiDAL training, device-resident path", f"{tr['device_path']['img_s']:,.0f} img/s", ""],
        [f"{s['backbone']} TiDAL training, loader path", f"{tr['loader_path']['img_s']:,.0f} img/s",
         f"device / loader = {tr['device_path']['img_s'] / tr['loader_path']['img_s']:.2f}"],
        ["plain CE vs TiDAL step, device path", f"{td['ce_img_s']:,.0f} vs {td['tidal_img_s']:,.0f} img/s",
         f"TD overhead {td['ratio']:.3f} (target <= 1.03)"],
        ["evaluation / scoring", f"{rates['eval_img_s']:,.0f} / {rates['score_img_s']:,.0f} img/s", ""],
        ["CIFAR-10 protocol trial (projected)", f"{proj['total_s'] / 60:.1f} min",
         f"train {proj['train_s'] / 60:.1f} + eval {proj['eval_s'] / 60:.1f} + score {proj['score_s'] / 60:.1f} min"],
        [f"{s['score_backbone']} {s['score_size']} px scoring, decode on {jpeg['tensor_decode']['decode_on']}",
         f"{jpeg['tensor_decode']['img_s']:,.0f} img/s", f"vs PIL decode: {jpeg['ratio']:.2f}x"],
        [f"{s['score_backbone']} {s['score_size']} px scoring, PIL decode in loader workers",
         f"{jpeg['pil_decode']['img_s']:,.0f} img/s", ""],
        ["end-to-end run, 2 cycles, 1 process", "ok" if e2e["rc"] == 0 else f"FAILED rc={e2e['rc']}",
         f"{e2e['seconds']:.0f} s; " + ", ".join(f"{c['labeled']} labeled: {c['accuracy']:.3f}"
                                                for c in e2e.get("cycles", []))],
        ["whole check", f"{phases['total_s']:.0f} s", "target < 480 s"],
    ]
    write("gpu_check", result, ["figure", "measured", "note"], rows, out=Path(args.out))
    return result


if __name__ == "__main__":
    main()
