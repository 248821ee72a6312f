"""Command line: `tidal-dist SUBCOMMAND ...` or `python -m tidal_dist SUBCOMMAND ...`.

    tidal-dist prepare --source fashion-mnist --out data/shards/fashion_mnist
    tidal-dist inspect data/shards/fashion_mnist --verify
    tidal-dist prepare --source cifar10 --out data/shards/c10 --base-url https://host/c10/
    accelerate launch -m tidal_dist run --config configs/cifar10.yaml run.dir=runs/c10 run.seed=1
    tidal-dist train --config configs/fashion_mnist_demo.yaml    # one training cycle, no AL loop
    tidal-dist pretrain --config configs/fashion_mnist_typiclust.yaml --out runs/pretrained/fmnist_small_cnn.safetensors
    tidal-dist sweep --config configs/cifar10.yaml --strategies tidal_entropy,random --seeds 0,1,2 --out runs/c10
    tidal-dist report runs/c10 --out runs/c10/report                # curves, tables, data maps
    tidal-dist run --config configs/cifar10.yaml --dry-run        # check against the data, print the plan
    tidal-dist status runs/c10                                    # the recorded outcome, as the exit code
    tidal-dist predict runs/c10 --out runs/c10/predictions.parquet  # the last model on the unlabeled pool

Bad input (UserError) prints one clear line and exits with status 2; no traceback. Exit codes of
run / train / status (tidal_dist/job/outcome.py, docs/launching.md): 0 done, 1 failed, 2 bad input,
3 waiting for labels, 4 not finished (status only), 75 preempted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tidal_dist.job.errors import UserError

EXIT_USER_ERROR = 2


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. train.epochs=10 run.dir=runs/x")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config against the dataset and the disk, print the plan "
                        "(cycles, sizes, steps), write nothing")
    p.add_argument("--world-size", type=int, default=None,
                   help="--dry-run: plan for this many processes (default: this launch's)")


def build_parser() -> argparse.ArgumentParser:
    from tidal_dist import __version__

    parser = argparse.ArgumentParser(
        prog="tidal-dist",
        description="Distributed active learning with training dynamics (TiDAL, ICCV 2023) on "
                    "WebDataset shards. Run a subcommand with -h for its options.")
    parser.add_argument("--version", action="version", version=f"tidal_dist {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="write a dataset as WebDataset shards + manifest")
    p.add_argument("--source", required=True,
                   help="fashion-mnist[:DIR] | cifar10 | cifar100 | svhn | torchvision:NAME[:DIR] | "
                        "imagefolder:ROOT | synthetic:N,C,HxW[,channels] | wds:PATTERN (existing "
                        "WebDataset shards, used in place) | hf:DIR (a Hugging Face dataset on disk)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--shard-size", type=int, default=5000, help="samples per shard (default 5000)")
    p.add_argument("--skip-bad", action="store_true",
                   help="imagefolder, wds:, hf: skip unreadable images (and evaluation samples "
                        "without a label) and count them instead of failing")
    p.add_argument("--eval-source", metavar="SRC",
                   help="wds: the evaluation split's shards, wds:PATTERN (default: no labeled "
                        "evaluation split; accuracy is then unknown)")
    p.add_argument("--copy", action="store_true",
                   help="wds: write tidal_dist's own shards instead of indexing the shards in place")
    p.add_argument("--image-key", metavar="KEY",
                   help="wds: the image member(s), comma-separated, first present wins (default "
                        "jpg,jpeg,png,webp,...); hf: the image column (default: the Image feature)")
    p.add_argument("--label", metavar="WHERE",
                   help="wds: cls (default), json:FIELD or none; hf: the label column (default: "
                        "the ClassLabel feature, or 'label'), or none")
    p.add_argument("--classes", metavar="FILE",
                   help="class names, one per line in label order (an unlabeled pool needs them "
                        "when nothing else names the classes)")
    p.add_argument("--base-url", metavar="URL",
                   help="where the shards will be served from (recorded in the manifest): a "
                        "folder, http(s)://HOST/PATH/, or a pipe: command with {shard}, e.g. "
                        "'pipe:aws s3 cp s3://bucket/c10/{shard} -'; the shards are still "
                        "written to --out for you to upload")

    p = sub.add_parser("inspect", help="print a prepared dataset's manifest summary")
    p.add_argument("root", help="folder written by `prepare`")
    p.add_argument("--verify", action="store_true",
                   help="re-hash every shard against the manifest (remote shards: read through "
                        "webdataset's opener, every byte)")
    p.add_argument("--shard-url", metavar="URL",
                   help="read the shards from here instead of the manifest's base_url (as "
                        "config key data.shard_url)")

    p = sub.add_parser("train", help="train one cycle on the initial labeled set and evaluate")
    _add_config_args(p)

    p = sub.add_parser("run", help="run the active-learning experiment (resumes if the run dir exists)")
    _add_config_args(p)

    p = sub.add_parser("pretrain", help="self-supervised SimCLR on the pool's images (no labels): "
                                        "backbone weights for model.weights (cold starts, "
                                        "al.initial_strategy=typiclust)")
    p.add_argument("--config", help="YAML config file: its data and model sections are used")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--out", required=True, metavar="WEIGHTS.safetensors",
                   help="the backbone's weights (written atomically), for model.weights")
    p.add_argument("--epochs", type=int, default=20, help="passes over the pool (default 20)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="images per step, each seen as two views (default 256)")
    p.add_argument("--temperature", type=float, default=0.5,
                   help="NT-Xent temperature tau (default 0.5)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, cosine-decayed (default 1e-3)")
    p.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="learn from a seeded sample of N pool images (default: the whole pool)")
    p.add_argument("--seed", type=int, default=None, help="default: the config's run.seed")

    p = sub.add_parser("sweep", help="one run per (strategy, seed), one after another (resumes)")
    _add_config_args(p)
    p.add_argument("--strategies", help="comma-separated al.strategy values, e.g. tidal_entropy,random")
    p.add_argument("--seeds", help="comma-separated run.seed values (default 0)")
    p.add_argument("--out", required=True, help="sweep folder: OUT/<strategy>/seed_<seed>/, OUT/sweep.json")
    p.add_argument("--launcher", help="start each run as `LAUNCHER -m tidal_dist run ...`, e.g. "
                   "'torchrun --nproc_per_node 2' (default: run each in the current processes)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each a subprocess with OMP_NUM_THREADS = cores / JOBS and "
                        "its log in OUT/logs/ (default 1: one after another)")
    p.add_argument("--print", action="store_true", help="only print each run's command")
    p.add_argument("--task", type=int, help="run only run K of OUT/sweep.json (array jobs)")
    p.add_argument("--slurm", action="store_true",
                   help="write OUT/sweep.sbatch (one array task per run) and print the sbatch line")

    p = sub.add_parser("report", help="compare runs and sweeps: curves, tables, data maps")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_SWEEP_DIR")
    p.add_argument("--out", required=True, help="report folder (report.md, figures, tables)")
    p.add_argument("--cartography-max-classes", type=int, default=100,
                   help="export per-epoch TD for Dataset Cartography only up to this many classes "
                        "(default 100; 0 disables the export)")

    p = sub.add_parser("predict", help="a committed cycle's model labels the rest of the pool (or "
                                       "the test split, or another prepared dataset)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--cycle", type=int, default=-1,
                   help="whose model: cycle K (negative: from the end; default -1, the last)")
    p.add_argument("--split", default="pool", metavar="pool|test|SOURCE",
                   help="pool (default: its ids not labeled by that cycle), test, or a folder "
                        "written by `tidal-dist prepare` (its pool split)")
    p.add_argument("--all", action="store_true", dest="all_ids",
                   help="--split pool: every pool id, the labeled ones too")
    p.add_argument("--out", required=True,
                   help="output file: .parquet (pyarrow) or CSV (any other name)")

    p = sub.add_parser("status", help="print a run's recorded outcome and exit with its code "
                                      "(0 done, 1 failed, 2 bad input, 3 waiting for labels, "
                                      "4 not finished, 75 preempted); a run waiting on "
                                      "Label Studio also gets the server's count of open tasks")
    p.add_argument("target", nargs="*", metavar="RUN_DIR | KEY=VALUE",
                   help="the run directory, or (with --config) config overrides naming it")
    p.add_argument("--config", help="find the run directory from this config (+ overrides)")
    return parser


def cmd_prepare(args: argparse.Namespace) -> int:
    from tidal_dist.cycle.lifecycle import OUTPUT_ERRNOS
    from tidal_dist.cycle.plan import check_output_location
    from tidal_dist.data.manifest import summary
    from tidal_dist.data.shards import prepare

    out = Path(args.out)
    if not (out / "manifest.json").exists():  # a finished output is a no-op, even read-only
        check_output_location(out, "--out")  # before reading (or downloading) the source
    try:
        source_options = {"eval_source": args.eval_source, "image_key": args.image_key,
                          "label": args.label, "classes": args.classes}
        manifest = prepare(args.source, out, shard_size=args.shard_size, skip_bad=args.skip_bad,
                           base_url=args.base_url, copy=args.copy, source_options=source_options)
    except OSError as e:
        if e.errno not in OUTPUT_ERRNOS:
            raise
        import os

        raise UserError(f"--out '{out}': cannot write '{e.filename or out}': {os.strerror(e.errno)}; "
                        f"the partial output was removed, nothing else was touched") from None
    print(summary(manifest))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from tidal_dist.data.locations import ShardSource
    from tidal_dist.data.manifest import load_manifest, summary, verify

    manifest = load_manifest(args.root)
    source = ShardSource.of(args.root, manifest.base_url, args.shard_url)
    print(summary(manifest))
    if not args.verify:  # problems: UserError, exit 2
        from tidal_dist.cycle.plan import check_shards

        check_shards(Path(args.root), manifest, args.shard_url)  # present and sized: no hashing
        if not source.remote:
            print(f"shards: all {sum(len(s.shards) for s in manifest.splits.values())} present "
                  f"with their manifest sizes (--verify also checks their sha256)")
    if args.verify:
        problems = verify(args.root, shard_problem=source.problem)
        where = f" (shards read from {source.base})" if source.base is not None else ""
        if problems:
            for line in problems:
                print(f"BAD: {line}", file=sys.stderr)
            print(f"verify: {len(problems)} problem(s) in {args.root}{where}", file=sys.stderr)
            return EXIT_USER_ERROR
        print(f"verify: all shards match their sha256 in {args.root}/manifest.json{where}")
    return 0


def _dry_run(args: argparse.Namespace, cfg) -> int:
    from tidal_dist.cycle.plan import dry_run
    from tidal_dist.job.distributed import world_size

    if args.world_size is not None and args.world_size < 1:
        raise UserError(f"--world-size must be >= 1 (got {args.world_size})")
    return dry_run(cfg, args.world_size or world_size())


def _run_config(args: argparse.Namespace):
    """The command's config with the input settings a timm backbone's weights imply filled in
    (cycle/plan.py: resolve_model_inputs), so config.yaml records the values the run uses."""
    from tidal_dist.config import load_config
    from tidal_dist.cycle.plan import resolve_model_inputs

    cfg = load_config(args.config, args.overrides)  # config errors before the heavy imports
    filled = resolve_model_inputs(cfg)
    if filled and args.dry_run:
        values = ", ".join(f"{k}={getattr(cfg.data, k.split('.')[1])}" for k in filled)
        print(f"from the weights' pretrained config: {values}")
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _run_config(args)
    if args.dry_run:
        return _dry_run(args, cfg)
    from tidal_dist.api.experiment import execute

    return execute(cfg, "train", in_process=False)  # the API's path; the process ends after it


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _run_config(args)
    if args.dry_run:
        return _dry_run(args, cfg)
    from tidal_dist.api.experiment import execute

    return execute(cfg, "run", in_process=False)  # the API's path; the process ends after it


def cmd_pretrain(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tidal_dist.config import load_config

    out = Path(args.out)
    checks = [(out.suffix == ".safetensors", f"--out '{out}': expected a .safetensors file name"),
              (args.epochs >= 1, f"--epochs must be >= 1 (got {args.epochs})"),
              (args.batch_size >= 2, f"--batch-size must be >= 2 (got {args.batch_size}): "
                                     f"NT-Xent contrasts each image with the others of its batch"),
              (args.temperature > 0, f"--temperature must be > 0 (got {args.temperature})"),
              (args.lr > 0, f"--lr must be > 0 (got {args.lr})"),
              (args.max_images is None or args.max_images >= 2,
               f"--max-images must be >= 2 (got {args.max_images})")]
    for ok, message in checks:
        if not ok:
            raise UserError(f"pretrain: {message}")
    if out.exists() and not out.is_file():
        raise UserError(f"pretrain: --out '{out}' exists and is not a file")
    cfg = load_config(args.config, args.overrides)
    if cfg.model.weights is not None and Path(cfg.model.weights).absolute() == out.absolute():
        # the config of the run these weights are for: start from scratch, not from them
        cfg.model = replace(cfg.model, weights=None)

    import numpy as np

    from tidal_dist.cycle.plan import check_output_location
    from tidal_dist.cycle.pool import pool_ids
    from tidal_dist.training.pretrain import PretrainSettings, pretrain
    from tidal_dist.training.runtime import setup_logging

    check_output_location(out.parent, "--out")
    seed = cfg.run.seed if args.seed is None else args.seed
    ids, _ = pool_ids(cfg)
    if args.max_images is not None and args.max_images < len(ids):
        ids = np.sort(np.random.default_rng(seed).choice(ids, size=args.max_images, replace=False))
    setup_logging(True)
    settings = PretrainSettings(epochs=args.epochs, batch_size=args.batch_size,
                                temperature=args.temperature, lr=args.lr, seed=seed)
    record = pretrain(cfg, ids, out, settings)
    losses = record["epoch_losses"]
    print(f"pretrain: NT-Xent {losses[0]:.4f} (epoch 1) -> {losses[-1]:.4f} (epoch {len(losses)}); "
          f"weights: {out}; use model.weights={out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from tidal_dist.sweep import sweep_main

    return sweep_main(args)


def cmd_report(args: argparse.Namespace) -> int:
    from tidal_dist.report import report_main

    return report_main(args.paths, args.out, cartography_max_classes=args.cartography_max_classes)


def cmd_predict(args: argparse.Namespace) -> int:
    from tidal_dist.cycle.predict import predict_main

    return predict_main(args.run_dir, args.out, cycle=args.cycle, split=args.split,
                        all_ids=args.all_ids)


def cmd_status(args: argparse.Namespace) -> int:
    from tidal_dist.job.outcome import status_main

    overrides = [t for t in args.target if "=" in t]
    cfg = None  # None: the oracle's note reads RUN_DIR/config.yaml
    if args.config or overrides:
        from tidal_dist.config import load_config

        cfg = load_config(args.config, args.target)
        run_dir = cfg.run.dir
    elif len(args.target) == 1:
        run_dir = args.target[0]
    else:
        raise UserError("status: give one RUN_DIR, or --config FILE [KEY=VALUE ...]")

    def open_tasks(waiting_dir):  # a run waiting on Label Studio: the server's count now
        from tidal_dist.cycle.label_studio import open_tasks_note

        return open_tasks_note(waiting_dir, cfg)

    return status_main(run_dir, waiting_note=open_tasks)


COMMANDS = {"prepare": cmd_prepare, "inspect": cmd_inspect, "train": cmd_train, "run": cmd_run,
            "pretrain": cmd_pretrain, "sweep": cmd_sweep, "report": cmd_report, "predict": cmd_predict,
            "status": cmd_status}


def entry() -> None:
    """The console script and `python -m tidal_dist`: main(), then leave the process.

    A rank of a multi-process launch leaves with os._exit once main() has returned (its outcome
    recorded, streams flushed, the process group destroyed): the interpreter's normal teardown
    then destroys c10d / gloo objects whose C++ threads still run, and now and then aborts with
    "terminate called without an active exception" (SIGABRT) after a finished run, which
    torchrun reports as a failure (seen here on DDP runs, rarely, and on about 1 in 25 DeepSpeed
    ZeRO-0 runs; pytorch/pytorch#179291 describes the teardown race). An error that escapes
    main() (a bug) keeps the normal exit and its traceback."""
    code = main()
    from tidal_dist.job.distributed import world_size

    if world_size() > 1:
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tidal_dist.job.distributed import export_launcher_env

    export_launcher_env()  # bare srun: torchrun's variables from SLURM's, before anyone reads them
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        from tidal_dist.job.distributed import rank, world_size

        where = f"[rank {rank()}] " if world_size() > 1 else ""
        print(f"tidal-dist {args.command}: error: {where}{e}", file=sys.stderr)
        return EXIT_USER_ERROR
