"""`tidal-dist sweep`: one run per (strategy, seed), run one after another, resumable.

    plan.py     the runs, their folders OUT/<strategy>/seed_<seed>/ and OUT/sweep.json
    execute.py  in-process or launcher subprocess execution, skip finished, resume unfinished
    slurm.py    --slurm: OUT/sweep.sbatch from launch/slurm/sweep.sbatch, one array task per run
"""

from __future__ import annotations

import argparse

from tidal_dist.job.distributed import rank
from tidal_dist.job.errors import UserError


def sweep_main(args: argparse.Namespace) -> int:
    from tidal_dist.sweep import execute, plan, slurm

    if args.jobs < 1:  # before sweep.json is written
        raise UserError(f"--jobs {args.jobs}: expected 1 or more runs at once")
    if args.task is not None:
        given = [f for f, v in (("--config", args.config), ("--strategies", args.strategies),
                                ("--seeds", args.seeds), ("KEY=VALUE", args.overrides)) if v]
        if given:
            raise UserError(f"--task runs a run of {args.out}/sweep.json as planned: drop "
                            f"{', '.join(given)}")
        if args.slurm or args.print:
            raise UserError("--task cannot be combined with --slurm or --print")
        sweep = plan.load_sweep(args.out)
        launcher = args.launcher if args.launcher is not None else sweep.launcher
        indices = execute.task_indices(sweep, args.task)
    else:
        if not args.config or not args.strategies:
            raise UserError("a new sweep needs --config FILE and --strategies a,b,... "
                            "(or --task K to run a run of an existing sweep)")
        if args.slurm and args.print:
            raise UserError("--slurm and --print: choose one")
        sweep = plan.plan_sweep(args.config, plan.parse_list(args.strategies, "strategies"),
                                plan.parse_seeds(args.seeds or "0"), args.out, args.overrides,
                                args.launcher)
        launcher = sweep.launcher
        if args.print:
            execute.print_commands(sweep, launcher)
            return 0
        if rank() == 0:
            plan.write_sweep(sweep)
        if args.slurm:
            if rank() == 0:
                path, line = slurm.write_script(sweep)
                print(f"tidal-dist sweep: {len(sweep.runs)} runs planned in {sweep.out}/sweep.json;"
                      f" array job script {path}\n{line}", flush=True)
            return 0
        indices = list(range(len(sweep.runs)))
    try:
        return execute.execute(sweep, indices, launcher, args.jobs)
    finally:
        if not launcher and args.jobs == 1:
            execute.finish_processes()


__all__ = ["sweep_main"]
