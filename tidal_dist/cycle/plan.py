"""Check a config against its dataset and the run directory's disk, and lay out the run.

    plan = make_plan(cfg, world_size)   # UserError naming the key or path for anything wrong
    print(plan.describe())               # `tidal-dist run --dry-run`

Everything here reads and never writes. `tidal-dist run` and `train` call `make_plan` before
anything is written (config.yaml included), so a setting that cannot work on the data refuses the
run without leaving a trace that would refuse the corrected one.

Checks: the manifest and every shard it lists (present, right size: a stat, not a hash), one
sample of each split decoded through the configured transforms (sizes must agree), the class
count, al.initial / al.budget / al.cycles against the (possibly imbalanced) pool, the batch
against the world size, the strategy and the objective it trains with (and what each needs of the
network and the batch), the model and its weights file, and the disk space the
run directory still needs (TD buffers, checkpoints, scores, committed cycles)
against what its filesystem has free. Sizes are estimates from the array shapes the run writes.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from tidal_dist.config import Config
from tidal_dist.data.manifest import Manifest, load_manifest
from tidal_dist.job.errors import UserError

NPY_HEADER = 128  # bytes np.save adds per array
RNG_STATE_BYTES = 8 * 1024  # torch + numpy + python RNG states of one rank
RESULTS_BYTES = 256 * 1024  # results.json / .md / .png, config.yaml, outcome.json
SCORE_COLUMNS = 10  # ids, uncertainty, reported, predicted + up to 6 logged cheap scores


@dataclass
class CyclePlan:
    cycle: int
    labeled: int
    candidates: int
    queried: int
    steps_per_epoch: int  # per rank (every rank runs the same number of steps)


@dataclass
class DiskPlan:
    model: int  # one saved state_dict
    td_buffers: int  # the last cycle's ids/sum/count/stats (and per-epoch records, when kept)
    checkpoint: int  # one mid-cycle checkpoint (two exist while the next is written)
    score_parts: int  # the largest cycle's per-rank score files
    committed: list[int] = field(default_factory=list)  # each committed cycle folder
    work_peak: int = 0  # the cycle in progress, at its largest
    run_dir_total: int = 0  # everything, once the run is done (+ the largest work peak)
    still_needed: int = 0  # what is not on disk yet
    free: int | None = None  # free bytes where run.dir lives


@dataclass
class Plan:
    world_size: int
    per_rank_batch: int
    pool_size: int
    num_classes: int
    image_shape: tuple[int, ...]  # C, H, W the model sees
    model_params: int
    cycles: list[CyclePlan]
    disk: DiskPlan
    already_committed: int = 0
    warnings: list[str] = field(default_factory=list)
    dataset: str = ""
    strategy: str = ""
    objective: str = ""

    def describe(self) -> str:
        lines = [
            f"dataset    {self.dataset}: pool {self.pool_size} samples, {self.num_classes} classes, "
            f"images {'x'.join(map(str, self.image_shape))} after the transforms",
            f"processes  {self.world_size}; batch {self.per_rank_batch} per rank "
            f"({self.per_rank_batch * self.world_size} global); model {self.model_params / 1e6:.2f}M "
            f"parameters (with its heads)",
            f"strategy   {self.strategy}, trained with objective {self.objective}",
            "",
            "| cycle | labeled | steps/epoch/rank | candidates | queried |",
            "|---|---|---|---|---|",
        ]
        for c in self.cycles:
            done = " (committed)" if c.cycle < self.already_committed else ""
            lines.append(f"| {c.cycle}{done} | {c.labeled} | {c.steps_per_epoch} | {c.candidates} | "
                         f"{c.queried} |")
        d = self.disk
        free = "unknown" if d.free is None else human(d.free)
        lines += [
            "",
            f"disk       TD buffers {human(d.td_buffers)} (last cycle); checkpoint "
            f"{human(d.checkpoint)}; scores {human(d.score_parts)}; "
            f"model {human(d.model)}",
            f"           committed cycles {human(sum(d.committed))}; cycle in progress up to "
            f"{human(d.work_peak)}; run dir about {human(d.run_dir_total)} at its largest",
            f"           still needed {human(d.still_needed)}; free there {free}",
        ]
        lines += [f"note: {w}" for w in self.warnings]
        return "\n".join(lines)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# ---------------------------------------------------------------------------------------------
# Checks


def check_shards(root: Path, manifest: Manifest, shard_url: str | None = None) -> None:
    """Every file the manifest lists exists with its recorded size (no hashing). Shards served
    from a URL (manifest base_url or data.shard_url) are only read by --verify or a run."""
    from tidal_dist.data.locations import ShardSource

    source = ShardSource.of(root, manifest.base_url, shard_url)
    problems = []
    for split in manifest.splits.values():
        for shard in [] if source.remote else split.shards:
            path = source.local_path(shard)
            if not path.is_file():
                problems.append(f"shard '{path}' is missing")
            elif path.stat().st_size != shard.bytes:
                problems.append(f"shard '{path}' has {path.stat().st_size} bytes, the manifest "
                                f"says {shard.bytes}")
        if not (root / split.labels_file).is_file():
            problems.append(f"labels file '{root / split.labels_file}' is missing")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UserError(f"data.root '{root}': the dataset is incomplete:\n  {shown}{more}\n"
                        f"prepare it again (or restore the copy)")


def _first_image_shape(cfg: Config, manifest: Manifest, split: str, train: bool) -> tuple[int, ...]:
    """Decode the first sample of `split` through the configured transform (read like a run
    reads it: local file, or the shard's URL)."""
    from tidal_dist.data.readers import StreamingDataset
    from tidal_dist.data.transforms import build_transform

    c = cfg.data
    kind = c.train_transform if train else c.eval_transform
    transform = build_transform(kind, manifest, train=train, crop_padding=c.crop_padding,
                                image_size=c.image_size, interpolation=c.interpolation)
    info = manifest.split(split)
    if not info.shards:
        raise UserError(f"data.root '{c.root}': split '{split}' holds no samples")
    first = StreamingDataset(c.root, split, transform, ids=info.ids()[:1], rank=0, world_size=1,
                             verify=False, shard_url=c.shard_url, cache_dir=c.cache_dir)
    for _id, image, _label in first:
        return tuple(image.shape)
    raise UserError(f"data.root '{c.root}': split '{split}' yields no sample")


def check_images(cfg: Config, manifest: Manifest) -> tuple[int, ...]:
    train_shape = _first_image_shape(cfg, manifest, "pool", train=True)
    # no evaluation split: scoring still reads pool images through the eval transform
    eval_split = "test" if manifest.split("test").num_samples else "pool"
    eval_shape = _first_image_shape(cfg, manifest, eval_split, train=False)
    if train_shape != eval_shape:
        raise UserError(
            f"config keys 'data.train_transform' ({cfg.data.train_transform}) and "
            f"'data.eval_transform' ({cfg.data.eval_transform}) give images of different sizes "
            f"({'x'.join(map(str, train_shape))} vs {'x'.join(map(str, eval_shape))}) on dataset "
            f"'{manifest.dataset}'; set data.image_size")
    return train_shape


def check_batch(cfg: Config, world: int, warnings: list[str]) -> int:
    from tidal_dist.training.runtime import per_rank_batch

    b = cfg.train.batch_size
    per_rank = per_rank_batch(b, world)
    for key, value in (("train.eval_batch_size", cfg.train.eval_batch_size),
                       ("al.score_batch_size", cfg.al.score_batch_size)):
        if value < 1:
            raise UserError(f"config key '{key}': must be >= 1 (got {value})")
    if cfg.train.sync_batchnorm and per_rank * world < 2:
        raise UserError(f"config key 'train.batch_size': {b} leaves 1 sample per step, and "
                        f"BatchNorm cannot normalise one sample; use train.batch_size >= 2")
    if per_rank < 2 and not cfg.train.sync_batchnorm:
        raise UserError(f"config key 'train.batch_size': {b} over {world} process(es) leaves "
                        f"{per_rank} sample per rank and step, and BatchNorm cannot normalise one "
                        f"sample; use train.batch_size >= {2 * world} or train.sync_batchnorm=true")
    if b % world:
        warnings.append(f"train.batch_size={b} is not divisible by {world} processes: each rank "
                        f"takes {per_rank}, so the global batch is {per_rank * world}")
    return per_rank


def check_output_location(path: Path, what: str = "config key 'run.dir'") -> Path:
    """The nearest existing folder at or above `path`, checked to be a writable directory (a
    folder that exists already must be one too). `what` names the setting in messages."""
    path = path.absolute()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what}: '{path}' exists and is not a folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what}: '{probe}' is a file, so '{path}' cannot be created there")
    if not os.access(probe, os.W_OK | os.X_OK):
        why = "is on a read-only filesystem" if _read_only(probe) else "is not writable by this user"
        raise UserError(f"{what}: '{probe}' {why}; choose another location")
    return probe


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# The plan


def cycle_plan(cfg: Config, pool_size: int, world: int, per_rank: int) -> tuple[list[CyclePlan], int | None]:
    """Labeled / candidate / queried counts per cycle; the run stops after a cycle that found no
    unlabeled sample left (it trained on the whole pool). Returns (cycles, exhausted_at)."""
    cycles, labeled = [], cfg.al.initial
    for k in range(cfg.al.cycles):
        unlabeled = pool_size - labeled
        subset = cfg.al.subset_size
        candidates = unlabeled if subset == "all" else min(int(subset), unlabeled)
        queried = min(cfg.al.budget, candidates)
        steps = math.ceil(labeled / (world * per_rank))
        cycles.append(CyclePlan(k, labeled, candidates, queried, steps))
        if candidates == 0:
            return cycles, k
        labeled += queried
    return cycles, None


def check_set_budget(cfg: Config, strategy, cycles: list[CyclePlan]) -> None:
    """A set-based strategy selects al.budget distinct candidates at once: a budget above the
    candidate subset, or above what the first cycle can offer, is a setting mistake. (When the
    pool runs low in a later cycle, it takes what is left, like top-k.)"""
    if not strategy.set_based:
        return
    subset = cfg.al.subset_size
    if subset != "all" and cfg.al.budget > subset:
        raise UserError(f"config key 'al.budget': strategy '{strategy.name}' selects "
                        f"{cfg.al.budget} of each cycle's candidates, but al.subset_size draws only "
                        f"{subset}; raise al.subset_size or lower al.budget")
    if cycles and cycles[0].candidates < cfg.al.budget:
        raise UserError(f"config key 'al.budget': strategy '{strategy.name}' selects "
                        f"{cfg.al.budget} of the candidates, but cycle 0 has only "
                        f"{cycles[0].candidates} unlabeled pool samples; lower al.budget")


def resolve_model_inputs(cfg: Config) -> list[str]:
    """Fill data.image_size / mean / std / interpolation left unset from a timm backbone's
    pretrained config when it has weights (in place, before the run's config.yaml is written, so
    it records them); returns the keys filled. A dataset that cannot be read is left to make_plan
    to report."""
    from tidal_dist.models.timm_backbone import resolve_input_settings, timm_name

    if timm_name(cfg.model.backbone) is None or cfg.model.weights is None:
        return []
    try:
        manifest = load_manifest(Path(cfg.data.root))
    except UserError:
        return []
    return resolve_input_settings(cfg.data, cfg.model, 1 if manifest.mode == "L" else 3)


def check_normalisation(cfg: Config, channels: int) -> None:
    for key, values in (("data.mean", cfg.data.mean), ("data.std", cfg.data.std)):
        if values is not None and len(values) != channels:
            raise UserError(f"config key '{key}': {len(values)} values for images of {channels} "
                            f"channel(s); give one per channel")


def model_size(cfg: Config, strategy, world: int, num_classes: int,
               in_channels: int, warnings: list[str] | None = None) -> tuple[int, int]:
    """(parameters, bytes of a state_dict) of the network the run trains (backbone and the
    objective's heads), without allocating the weights; the same strategy / objective / network
    checks build_session makes before training (Learning Loss's even batch, a head or dropout
    point the strategy reads)."""
    import torch

    from tidal_dist.models import available_outputs, build_model
    from tidal_dist.objectives import resolve_objective
    from tidal_dist.strategies import check_outputs

    objective = resolve_objective(cfg, strategy.objective)
    objective.validate(cfg.train, world)
    from tidal_dist.models.timm_backbone import check_weights, timm_name

    weights = cfg.model.weights
    name = timm_name(cfg.model.backbone)
    if name is not None and weights is not None:
        # the file read and matched key by key against the architecture (no weights allocated)
        notes = check_weights(name, weights, num_classes, in_channels)
        if warnings is not None:
            warnings.extend(notes)
    elif weights is not None:
        from tidal_dist.models.backbones import check_builtin_weights

        notes = check_builtin_weights(cfg.model, num_classes, in_channels)
        if warnings is not None:
            warnings.extend(notes)
    with torch.device("meta"):
        model = build_model(replace(cfg.model, weights=None), num_classes, in_channels,
                            objective.heads(cfg.train))
    check_outputs(strategy, available_outputs(model), objective.name)
    params = sum(p.numel() for p in model.parameters())
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return params, state


def disk_plan(cfg: Config, cycles: list[CyclePlan], world: int, num_classes: int, params: int,
              state_bytes: int) -> DiskPlan:
    c = num_classes
    workers = max(cfg.data.num_workers, 1)

    epoch_records = cfg.train.epochs if cfg.train.record_epoch_probs else 0

    def td(n: int) -> int:
        # ids, sum [C], count, stats [3] (dynamics/buffer.py), plus one [N, C] file per epoch
        return 4 * NPY_HEADER + n * (8 + 4 * c + 4 + 24) + epoch_records * (NPY_HEADER + n * 4 * c)

    def scores(n: int) -> int:
        # per rank: ids, uncertainty, reported, predicted and the logged cheap scores (score.py)
        rows = max(1, math.ceil(n / (world * workers)) * workers)
        return world * SCORE_COLUMNS * (NPY_HEADER + rows * 8)

    optimizer = params * 4 if cfg.train.momentum else 0
    if cfg.train.engine == "deepspeed":
        optimizer += params * 4  # ZeRO's fp32 master copy, partitioned over the ranks
    checkpoints = [state_bytes + optimizer + td(cy.labeled) + world * RNG_STATE_BYTES
                   for cy in cycles]
    committed = [td(cy.labeled) + state_bytes + 16 * cy.labeled + 24 * cy.queried
                 + 24 * cy.candidates + 8 * 1024 for cy in cycles]
    work = [td(cy.labeled) + 2 * ck + state_bytes + scores(cy.candidates)
            + committed_k for cy, ck, committed_k in zip(cycles, checkpoints, committed)]
    last = cycles[-1]
    disk = DiskPlan(model=state_bytes, td_buffers=td(last.labeled),
                    checkpoint=checkpoints[-1], score_parts=max(scores(cy.candidates) for cy in cycles),
                    committed=committed, work_peak=max(work))
    disk.run_dir_total = sum(committed) + disk.work_peak + RESULTS_BYTES
    return disk


def committed_count(run_dir: Path) -> int:
    n = 0
    while (run_dir / "cycles" / f"cycle_{n:04d}").is_dir():
        n += 1
    return n


def make_plan(cfg: Config, world_size: int, check_disk: bool = True) -> Plan:
    """Validate `cfg` against its dataset and run dir; UserError naming the key or path."""
    from tidal_dist.cycle.pool import initial_labeled_set, pool_ids
    from tidal_dist.objectives import resolve_objective
    from tidal_dist.strategies import get_strategy

    warnings: list[str] = []
    root = Path(cfg.data.root)
    manifest = load_manifest(root)
    check_shards(root, manifest, cfg.data.shard_url)
    if manifest.num_classes < 2:
        raise UserError(f"data.root '{root}': dataset '{manifest.dataset}' has "
                        f"{manifest.num_classes} class; classification needs at least 2")
    pool = manifest.split("pool")
    if cfg.al.oracle == "simulated" and not pool.fully_labeled:
        raise UserError(f"config key 'al.oracle': simulated answers each query with the label "
                        f"stored in the dataset, and data.root '{root}' has labels for only "
                        f"{pool.labeled_count} of its {pool.num_samples} pool samples (an unlabeled "
                        f"pool); use al.oracle=file: a person labels each cycle's queries")
    if manifest.split("test").num_samples < 1:
        warnings.append(f"data.root '{root}' has no labeled evaluation split: the run selects "
                        f"as usual and test accuracy is unknown (prepare with val/ or "
                        f"--eval-source for one)")
    strategy = get_strategy(cfg.al.strategy)
    shape = check_images(cfg, manifest)
    per_rank = check_batch(cfg, world_size, warnings)
    ids, _reserved = pool_ids(cfg)
    pool_size = len(ids)
    initial_labeled_set(cfg)  # al.initial against the pool and its reserved samples
    cycles, exhausted = cycle_plan(cfg, pool_size, world_size, per_rank)
    check_set_budget(cfg, strategy, cycles)
    if exhausted is not None:
        warnings.append(
            f"the pool ({pool_size} samples) runs out in cycle {exhausted}: al.initial="
            f"{cfg.al.initial} + al.budget={cfg.al.budget} per cycle; the run ends (done) after "
            f"that cycle, which trains on the whole pool, instead of running al.cycles="
            f"{cfg.al.cycles}")
    if cfg.al.budget == 0:
        warnings.append("al.budget=0: every cycle trains on the same labeled set")
    if cfg.al.subset_size != "all" and cfg.al.budget > int(cfg.al.subset_size):
        warnings.append(f"al.budget={cfg.al.budget} is more than the al.subset_size="
                        f"{cfg.al.subset_size} candidates drawn each cycle: each cycle queries "
                        f"all {cfg.al.subset_size} of them (the whole subset, chosen by no "
                        f"strategy); raise al.subset_size to at least al.budget")
    check_normalisation(cfg, shape[0])
    params, state_bytes = model_size(cfg, strategy, world_size, manifest.num_classes, shape[0],
                                     warnings)
    disk = disk_plan(cfg, cycles, world_size, manifest.num_classes, params, state_bytes)
    run_dir = Path(cfg.run.dir)
    done = committed_count(run_dir) if run_dir.is_dir() else 0
    disk.still_needed = sum(disk.committed[done:]) + (disk.work_peak if done < len(cycles) else 0) \
        + (RESULTS_BYTES if done == 0 else 0)
    if check_disk:
        probe = check_output_location(run_dir)
        disk.free = free_bytes(probe)
        if disk.free is not None and disk.still_needed > disk.free:
            raise UserError(f"config key 'run.dir': '{run_dir}' needs about "
                            f"{human(disk.still_needed)} more for this run, and its filesystem "
                            f"('{probe}') has {human(disk.free)} free; free some space or choose "
                            f"another run.dir")
    return Plan(world_size=world_size, per_rank_batch=per_rank, pool_size=pool_size,
                num_classes=manifest.num_classes, image_shape=shape, model_params=params,
                cycles=cycles, disk=disk, already_committed=done, warnings=warnings,
                dataset=f"{manifest.dataset} at {root}", strategy=strategy.name,
                objective=resolve_objective(cfg, strategy.objective).name)


def dry_run(cfg: Config, world_size: int) -> int:
    """`tidal-dist run --dry-run`: print the plan; nothing is written."""
    plan = make_plan(cfg, world_size)
    print(plan.describe())
    print(f"dry run: the config fits the dataset; nothing was written "
          f"({'run dir ' + str(cfg.run.dir) + ' exists' if Path(cfg.run.dir).exists() else 'run dir not created'})")
    return 0


__all__ = ["Plan", "make_plan", "dry_run"]
