"""Command line: `tidal-dist SUBCOMMAND ...` or `python -m tidal_dist SUBCOMMAND ...`.

    tidal-dist prepare --source fashion-mnist --out data/shards/fashion_mnist
    tidal-dist inspect data/shards/fashion_mnist --verify
    tidal-dist prepare --source cifar10 --out data/shards/c10 --base-url https://host/c10/
    accelerate launch -m tidal_dist run --config configs/cifar10.yaml run.dir=runs/c10 run.seed=1
    tidal-dist train --config configs/fashion_mnist_demo.yaml    # one training cycle, no AL loop

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


COMMANDS = {"prepare": cmd_prepare, "inspect": cmd_inspect, "train": cmd_train, "run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        from tidal_dist.distributed import rank, world_size

        where = f"[rank {rank()}] " if world_size() > 1 else ""
        print(f"tidal-dist {args.command}: error: {where}{e}", file=sys.stderr)
        return EXIT_USER_ERROR
