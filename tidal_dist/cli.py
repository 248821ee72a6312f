"""Command line: `tidal-dist SUBCOMMAND ...` or `python -m tidal_dist SUBCOMMAND ...`.

    tidal-dist prepare --source fashion-mnist --out data/shards/fashion_mnist
    tidal-dist inspect data/shards/fashion_mnist --verify
    tidal-dist prepare --source cifar10 --out data/shards/c10 --base-url https://host/c10/
    accelerate launch -m tidal_dist run --config configs/cifar10.yaml run.dir=runs/c10 run.seed=1
    tidal-dist train --config configs/fashion_mnist_demo.yaml    # one training cycle, no AL loop
    tidal-dist sweep --config configs/cifar10.yaml --strategies tidal_entropy,random --seeds 0,1,2 --out runs/c10
    tidal-dist report runs/c10 --out runs/c10/report                # curves, tables, data maps

Bad input (UserError) prints one clear line and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys

from tidal_dist.errors import UserError

EXIT_USER_ERROR = 2


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. train.epochs=10 run.dir=runs/x")


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
                        "imagefolder:ROOT | synthetic:N,C,HxW[,channels]")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--shard-size", type=int, default=5000, help="samples per shard (default 5000)")
    p.add_argument("--skip-bad", action="store_true",
                   help="imagefolder: skip unreadable images and count them instead of failing")
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
    return parser


def cmd_prepare(args: argparse.Namespace) -> int:
    from tidal_dist.data.manifest import summary
    from tidal_dist.data.shards import prepare

    manifest = prepare(args.source, args.out, shard_size=args.shard_size, skip_bad=args.skip_bad,
                       base_url=args.base_url)
    print(summary(manifest))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from tidal_dist.data.locations import ShardSource
    from tidal_dist.data.manifest import load_manifest, summary, verify

    manifest = load_manifest(args.root)
    source = ShardSource.of(args.root, manifest.base_url, args.shard_url)
    print(summary(manifest))
    if args.verify:
        problems = verify(args.root, shard_problem=source.problem)
        where = f" (shards read from {source.base})" if source.base is not None else ""
        if problems:
            for line in problems:
                print(f"BAD: {line}", file=sys.stderr)
            print(f"verify: {len(problems)} problem(s) in {args.root}{where}", file=sys.stderr)
            return 1
        print(f"verify: all shards match their sha256 in {args.root}/manifest.json{where}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tidal_dist.config import load_config

    cfg = load_config(args.config, args.overrides)  # config errors before the heavy imports
    from tidal_dist.train import train_main

    return train_main(cfg)


def cmd_run(args: argparse.Namespace) -> int:
    from tidal_dist.config import load_config

    cfg = load_config(args.config, args.overrides)
    from tidal_dist.loop import run_main

    return run_main(cfg)


def cmd_sweep(args: argparse.Namespace) -> int:
    from tidal_dist.sweep import sweep_main

    return sweep_main(args)


def cmd_report(args: argparse.Namespace) -> int:
    from tidal_dist.report import report_main

    return report_main(args.paths, args.out, cartography_max_classes=args.cartography_max_classes)


COMMANDS = {"prepare": cmd_prepare, "inspect": cmd_inspect, "train": cmd_train, "run": cmd_run,
            "sweep": cmd_sweep, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        from tidal_dist.distributed import rank, world_size

        where = f"[rank {rank()}] " if world_size() > 1 else ""
        print(f"tidal-dist {args.command}: error: {where}{e}", file=sys.stderr)
        return EXIT_USER_ERROR
