"""Typed configuration: nested dataclasses loaded from YAML, with `section.key=value` overrides.

    cfg = load_config("configs/cifar10.yaml", ["train.epochs=50", "run.dir=/runs/c10"])

Values are parsed with yaml.safe_load (never eval) and checked against the field's annotation.
An unknown key or a value of the wrong type raises UserError naming the key and, for typos, the
closest valid keys. A bare `key=value` is accepted when exactly one section has that key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from tidal_dist.job.errors import UserError


@dataclass
class DataConfig:
    root: str = "data/shards/fashion_mnist"  # a folder written by `tidal-dist prepare`
    imbalance_ratio: float | None = None  # long-tailed pool (>= 1); the test split stays balanced
    train_transform: Literal["crop_flip", "random_resized_crop", "none"] = "crop_flip"
    eval_transform: Literal["none", "resize_center_crop"] = "none"
    crop_padding: int = 4  # crop_flip: zero-pad then random crop back to the image size
    image_size: int | None = None  # resize target for random_resized_crop / resize_center_crop
    num_workers: int = 2  # DataLoader workers per rank
    verify_shards: bool = True  # sha256 of every shard checked against the manifest on first open
    # Where the shards are read from, overriding the manifest's base_url: a folder, an
    # http(s):// URL, or a `pipe:` command with {shard} (docs/remote-shards.md).
    shard_url: str | None = None
    cache_dir: str | None = None  # per-node copies of remote shards; None: $TMPDIR/tidal_dist_cache-UID
    # eval/scoring decode: pil in loader workers, or tensor (torchvision.io, batched on the GPU
    # when there is one); auto: tensor on a GPU for image folders (data/tensor_decode.py)
    decode: Literal["auto", "pil", "tensor"] = "auto"
    # Normalisation and resize filter: None takes the manifest's mean / std and bilinear; a timm
    # backbone with pretrained weights fills the unset ones (and image_size) from the weights'
    # pretrained config, and the run's config.yaml records the values used.
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = None


@dataclass
class ModelConfig:
    # A built-in (small_cnn, resnet18_cifar, resnet18, resnet50) or timm:NAME, any timm image
    # classifier (models/timm_backbone.py)
    backbone: str = "resnet18_cifar"
    # Local pretrained weights: a state_dict file (safetensors, or torch.save of a state_dict)
    # for any backbone (`tidal-dist pretrain` writes one from the unlabeled pool), or `hub`
    # (timm only: the local Hugging Face cache)
    weights: str | None = None
    td_hidden: int = 128  # per-stage width of the TD prediction module (tidal-method.md)
    width: int = 16  # small_cnn only: channels of the first stage


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128  # global batch: split evenly over the ranks
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # LR x lr_gamma at these fractions of train.epochs: the protocol's epoch 160 of 200 is 0.8.
    lr_decay_at: list[float] = field(default_factory=lambda: [0.8])
    lr_gamma: float = 0.1
    # What the classifier is trained with (tidal_dist/objectives/): auto takes the strategy's own
    # (tidal for the TiDAL strategies, lloss for Learning Loss, ce for the other baselines).
    objective: Literal["auto", "ce", "tidal", "lloss"] = "auto"
    # Record training dynamics (and train the TD module on detached features) under any
    # objective, so data maps and the module analysis exist for baselines too.
    record_td: bool = True
    td_weight: float = 1.0  # lambda in L = CE + lambda * KL(TD target || module prediction)
    lloss_weight: float = 1.0  # weight of Learning Loss's ranking loss
    lloss_loss: Literal["bce", "margin"] = "bce"  # bce: TiDAL reference code; margin: the LL4AL paper
    lloss_margin: float = 1.0  # xi of the margin ranking loss
    lloss_detach_at: float = 0.6  # fraction of train.epochs after which the loss head's features are detached
    engine: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: int = 2
    # auto: bf16 on GPU, fp32 on CPU; bf16: bf16 autocast on either (training/runtime.py)
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    channels_last: bool | None = None  # None: on for GPU, off for CPU
    eval_batch_size: int = 256
    checkpoint_every: int = 10  # epochs between mid-cycle checkpoints (0: only at cycle end)
    # auto: the labeled set decoded once into device memory when it fits the budget and the
    # train transform allows (data/train_batches.py); loader: decode per visit in loader workers.
    # Evaluation and scoring follow it (data/decoded_split.py): a split kept decoded on the
    # device unless loader (or an eval transform other than none, or a split over the budget).
    data_path: Literal["auto", "loader", "device"] = "auto"
    # per process, for each of the decoded uint8 labeled set and each split kept decoded
    device_data_budget_mb: int = 4096
    compile: bool = False  # torch.compile the training forward
    record_epoch_probs: bool = False  # td/epochs/probs_eXXXX.npy [N, C] per epoch (data maps)
    timeout_s: int = 300  # process-group timeout: a dead rank ends the job within this bound
    # BatchNorm statistics over the global batch (all ranks) instead of each rank's slice: the
    # same seed then gives the same results on any number of processes (docs/launching.md).
    sync_batchnorm: bool = False
    # Fine-tuning recipes (training/optim.py): sgd + step is the paper's protocol; adamw + cosine
    # (after train.warmup_epochs of linear warm-up) is the usual one for pretrained models.
    optimizer: Literal["sgd", "adamw"] = "sgd"
    schedule: Literal["step", "cosine"] = "step"
    warmup_epochs: int = 0
    # backbone: a linear probe; only the classifier and the TD / loss heads learn, the backbone
    # stays in eval mode (its BatchNorm statistics fixed)
    freeze: Literal["none", "backbone"] = "none"
    # auto: with train.freeze=backbone, the backbone's outputs computed once per cycle and the
    # epochs trained on them, without augmentation (training/frozen_features.py); off: images
    feature_cache: Literal["auto", "off"] = "auto"


@dataclass
class ALConfig:
    initial: int = 1000
    # Pool samples held out for validation (a fixed draw, the same for every seed and strategy):
    # never labeled or queried, evaluated every cycle as val_accuracy. Tune protocol choices on
    # it, never on the test split.
    val_size: int = 0
    budget: int = 1000  # samples labeled per cycle
    cycles: int = 10
    subset_size: int | Literal["all"] = 10000  # candidates drawn from the unlabeled pool per cycle
    # Candidate subsets are drawn with (this seed, cycle); None follows run.seed, so seeds differ
    # in their subsets too. Set it to hold the subsets fixed across seeds.
    subset_seed: int | None = None
    strategy: str = "tidal_entropy"
    mc_passes: int = 10  # bald: Monte-Carlo dropout passes
    mc_dropout: float = 0.5  # bald: dropout probability on the pooled penultimate features
    cluster_factor: int = 10  # tidal_cluster: cluster the top cluster_factor x budget candidates
    # Also compute every cheap per-sample score (entropy, margin, least confidence, TiDAL-H/-M, and
    # predicted loss where there is a loss head) for each candidate and keep them in scores.npz:
    # one run then yields the paper's ablation of classifier vs module scores.
    log_scores: bool = True
    # Who labels: simulated (the shards' labels), file (a person: queries/ + labels/ files,
    # docs/labeling.md), label_studio (a person in Label Studio, al.label_studio_url). With a
    # person, cycle 0's initial set is queried too and labeled before any training.
    oracle: Literal["simulated", "file", "label_studio"] = "simulated"
    # How cycle 0's al.initial samples are chosen, without labels: random (a seeded draw), or
    # typiclust (Hacohen et al., ICML 2022: typical samples of k-means clusters of a pretrained
    # backbone's embeddings, so it needs model.weights).
    initial_strategy: Literal["random", "typiclust"] = "random"
    label_studio_url: str | None = None  # e.g. http://localhost:8080
    # The API token is read from this environment variable only, never from a file or the config.
    label_studio_token_env: str = "LABEL_STUDIO_API_KEY"
    label_studio_project: str | None = None  # project title; None: "tidal_dist <run.dir name>"
    # The server's LOCAL_FILES_DOCUMENT_ROOT as a path on this machine: the query images under
    # RUN_DIR/queries/ are served from there (Label Studio's local-files storage).
    label_studio_document_root: str = "/"
    # An http(s) URL under which RUN_DIR/queries/ is served (object storage, a web server,
    # `python -m http.server -d RUN_DIR/queries`): set it when Label Studio runs on another machine
    # than RUN_DIR. Each task's image is then this URL + the image's path under queries/, and no
    # local-files storage is used. None: local files (label_studio_document_root).
    label_studio_image_url: str | None = None
    score_batch_size: int = 256
    # Measured-TD strategies (td_measured_entropy, td_measured_margin, label_dispersion): measure
    # the cycle's candidates every this many epochs of training (and after the last epoch).
    td_measure_every: int = 1


@dataclass
class RunConfig:
    dir: str = "runs/default"
    seed: int = 0
    deterministic: bool = False
    log_every: int = 20  # steps between progress-bar postfix updates and metrics.jsonl step records
    # Accelerate trackers fed from the metrics.jsonl records (rank 0): tensorboard writes
    # RUN_DIR/tensorboard/; wandb needs the wandb package and its login.
    trackers: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    # Seconds from the first stop signal to a forced exit if the checkpoint has not finished;
    # under torchrun capped below its grace period (tidal_dist/job/preemption.py).
    preempt_deadline_s: int = 60


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    al: ALConfig = field(default_factory=ALConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


# Keys that may change between invocations on the same run directory without making it "another
# config": they affect speed or how far the run goes, not what the finished cycles mean.
MUTABLE_KEYS = frozenset(
    {"data.num_workers", "data.verify_shards", "data.shard_url", "data.cache_dir", "data.decode",
     "al.cycles", "run.log_every", "train.timeout_s", "train.checkpoint_every", "run.trackers",
     "run.preempt_deadline_s", "al.label_studio_url", "al.label_studio_token_env",
     "al.label_studio_document_root", "al.label_studio_image_url"}
)


def candidate_seed(cfg: Config) -> int:
    """The seed of the cycle's candidate subsets: al.subset_seed, or run.seed when it is unset."""
    return cfg.run.seed if cfg.al.subset_seed is None else cfg.al.subset_seed


def all_keys() -> list[str]:
    keys = []
    for section, cls in typing.get_type_hints(Config).items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def _suggest(key: str) -> str:
    keys = all_keys()
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
    if not close:  # also match on the last part alone: "epoch" -> train.epochs
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] in
                 difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in keys], n=3, cutoff=0.6)]
    return f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(keys)}"


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """Return `value` converted to `tp`, or raise TypeError. Only lossless conversions."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads a bare no / yes as a boolean
            for word in (("no", "off", "false") if not value else ("yes", "on", "true")):
                if word in typing.get_args(tp):
                    return word
        if value in typing.get_args(tp):
            return value
        raise TypeError
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg)
            except TypeError:
                continue
        raise TypeError
    if origin is list:
        if not isinstance(value, list):
            raise TypeError
        return [_coerce(v, typing.get_args(tp)[0]) for v in value]
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # paths like run.dir=2024 parse as numbers
        raise TypeError
    raise TypeError


def _set(cfg: Config, key: str, value: Any, origin: str) -> None:
    parts = key.split(".")
    hints = typing.get_type_hints(Config)
    if len(parts) != 2 or parts[0] not in hints:
        raise UserError(f"{origin}: unknown config key '{key}'{_suggest(key)}")
    section, name = parts
    section_obj = getattr(cfg, section)
    field_types = typing.get_type_hints(type(section_obj))
    if name not in field_types:
        raise UserError(f"{origin}: unknown config key '{key}'{_suggest(key)}")
    tp = field_types[name]
    try:
        setattr(section_obj, name, _coerce(value, tp))
    except TypeError:
        raise UserError(
            f"{origin}: config key '{key}' expects {_type_name(tp)}, got {value!r}"
        ) from None


def _expand_bare_key(key: str, origin: str) -> str:
    if "." in key:
        return key
    owners = [k for k in all_keys() if k.endswith("." + key)]
    if len(owners) == 1:
        return owners[0]
    if len(owners) > 1:
        raise UserError(f"{origin}: key '{key}' is ambiguous; write one of {', '.join(owners)}")
    raise UserError(f"{origin}: unknown config key '{key}'{_suggest(key)}")


def apply_dict(cfg: Config, data: dict[str, Any], origin: str) -> None:
    if not isinstance(data, dict):
        raise UserError(f"{origin}: expected a mapping of sections (data, model, train, al, run)")
    for section, values in data.items():
        if isinstance(values, dict):
            for name, value in values.items():
                _set(cfg, f"{section}.{name}", value, origin)
        else:
            _set(cfg, _expand_bare_key(str(section), origin), values, origin)


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UserError(f"override '{text}': expected key=value, e.g. train.epochs=10")
    key, raw = text.split("=", 1)
    key = _expand_bare_key(key.strip(), f"override '{text}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as e:
        raise UserError(f"override '{text}': cannot parse value: {e}") from None
    return key, value


def validate(cfg: Config) -> None:
    """Checks that span more than one field's type."""
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise UserError(f"config key '{key}': {what}")

    need(cfg.data.imbalance_ratio is None or cfg.data.imbalance_ratio >= 1,
         "data.imbalance_ratio", f"must be >= 1 (got {cfg.data.imbalance_ratio})")
    need(cfg.data.num_workers >= 0, "data.num_workers", "must be >= 0")
    url = cfg.data.shard_url
    need(url is None or (url.strip() != "" and ("{shard}" in url or not url.startswith("pipe:"))),
         "data.shard_url", "a folder or URL; a pipe: command must contain {shard} where the "
         "shard's file name goes (e.g. 'pipe:aws s3 cp s3://bucket/c10/{shard} -')")
    need(cfg.data.cache_dir is None or cfg.data.cache_dir.strip() != "", "data.cache_dir",
         "a folder, or null for the default")
    need(cfg.train.epochs >= 1, "train.epochs", "must be >= 1")
    need(0 <= cfg.train.warmup_epochs < cfg.train.epochs, "train.warmup_epochs",
         f"must be >= 0 and below train.epochs ({cfg.train.epochs})")
    for key, values in (("data.mean", cfg.data.mean), ("data.std", cfg.data.std)):
        need(values is None or len(values) in (1, 3), key, "a list of 1 or 3 numbers (per channel)")
    need(cfg.data.std is None or all(v > 0 for v in cfg.data.std), "data.std", "must be > 0")
    builtin = ("small_cnn", "resnet18_cifar", "resnet18", "resnet50")
    backbone = cfg.model.backbone
    if backbone not in builtin and not (backbone.startswith("timm:") and backbone[5:].strip()):
        raise UserError(f"config key 'model.backbone' expects {' | '.join(map(repr, builtin))} | "
                        f"'timm:NAME' (any timm model, e.g. timm:resnet50), got {backbone!r}")
    need(cfg.train.batch_size >= 1, "train.batch_size", "must be >= 1")
    need(cfg.train.zero_stage in (0, 1, 2), "train.zero_stage", "must be 0, 1 or 2")
    need(0 < cfg.train.lloss_detach_at <= 1, "train.lloss_detach_at", "a fraction of train.epochs in (0, 1]")
    need(cfg.al.mc_passes >= 1, "al.mc_passes", "must be >= 1")
    need(0 <= cfg.al.mc_dropout < 1, "al.mc_dropout", "a probability in [0, 1)")
    need(cfg.al.cluster_factor >= 1, "al.cluster_factor", "must be >= 1")
    need(cfg.train.device_data_budget_mb >= 0, "train.device_data_budget_mb", "must be >= 0")
    need(all(0 < f <= 1 for f in cfg.train.lr_decay_at), "train.lr_decay_at",
         "fractions of train.epochs in (0, 1]")
    need(cfg.al.initial >= 1, "al.initial", "must be >= 1")
    need(cfg.al.val_size >= 0, "al.val_size", "must be >= 0")
    need(cfg.al.budget >= 0, "al.budget", "must be >= 0")
    need(cfg.al.cycles >= 1, "al.cycles", "must be >= 1")
    need(cfg.al.subset_size == "all" or cfg.al.subset_size >= 1, "al.subset_size",
         "must be 'all' or >= 1")
    need(cfg.al.td_measure_every >= 1, "al.td_measure_every", "must be >= 1 (epochs)")
    need(cfg.run.preempt_deadline_s >= 1, "run.preempt_deadline_s", "must be >= 1")
    need(cfg.al.initial_strategy != "typiclust" or cfg.model.weights is not None,
         "al.initial_strategy", "typiclust clusters the embeddings of a pretrained backbone, and "
         f"model.backbone '{cfg.model.backbone}' has no pretrained weights here: set "
         "model.weights to a local pretrained state_dict file (`tidal-dist pretrain` writes one "
         "from the unlabeled pool), or use al.initial_strategy=random")
    need(cfg.al.oracle != "label_studio" or bool(cfg.al.label_studio_url), "al.label_studio_url",
         "al.oracle=label_studio needs the server's URL, e.g. http://localhost:8080")
    image_url = cfg.al.label_studio_image_url
    need(image_url is None or _is_http_url(image_url), "al.label_studio_image_url",
         "an http:// or https:// URL with a host, under which RUN_DIR/queries/ is served "
         f"(e.g. https://bucket.example.com/run1/queries), or null for Label Studio's local files; "
         f"got {image_url!r}")


def _is_http_url(text: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    cfg = Config()
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise UserError(f"config file '{path}' is a folder: give a YAML file (see configs/)")
        if not path.is_file():
            raise UserError(f"config file '{path}' does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise UserError(f"config file '{path}': not valid YAML: {e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"config file '{path}': cannot read it: {e}") from None
        if data is None:  # an empty file is a mistake, not a request for every default
            raise UserError(f"config file '{path}' is empty (no settings): give a config from "
                            f"configs/, or leave out --config to run on the defaults and "
                            f"KEY=VALUE overrides")
        apply_dict(cfg, data, f"config file '{path}'")
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value, f"override '{text}'")
    validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any], origin: str = "config") -> Config:
    cfg = Config()
    apply_dict(cfg, data, origin)
    validate(cfg)
    return cfg


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def flatten(cfg: Config) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, section in cfg.to_dict().items() for k, v in section.items()}


PATH_KEYS = frozenset({"data.root", "run.dir"})  # compared as resolved paths


def _comparable(cfg: Config) -> dict[str, Any]:
    flat = flatten(cfg)
    for key in PATH_KEYS:
        if flat[key] is not None:
            flat[key] = str(Path(flat[key]).expanduser().resolve())
    return flat


def diff(old: Config, new: Config, ignore: frozenset[str] = MUTABLE_KEYS) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every key that differs, outside `ignore`."""
    a, b = _comparable(old), _comparable(new)
    return [(k, flatten(old)[k], flatten(new)[k]) for k in a if a[k] != b[k] and k not in ignore]


RUN_CONFIG_NAME = "config.yaml"


def holds_results(run_dir: Path) -> bool:
    """Whether a run directory holds anything besides its config.yaml that a restart would use."""
    for name in ("cycles", "work", "train", "queries", "labels"):
        folder = run_dir / name
        if folder.is_dir() and any(folder.iterdir()):
            return True
    return False


def start_over_hint(run_dir: Path) -> str:
    """How to start over in a run dir that holds only a config.yaml (e.g. written by a version
    that checked the config against the dataset only after writing it)."""
    if holds_results(run_dir):
        return ""
    return (f"; '{run_dir}' holds no results yet, only its {RUN_CONFIG_NAME}: to start over with "
            f"other settings, delete '{run_dir / RUN_CONFIG_NAME}' (or the whole folder)")


def bind_run_dir(cfg: Config, write: bool) -> Path:
    """Tie `cfg` to its run directory: write the resolved config there on first use, refuse a
    directory created with a different config afterwards (listing the differing keys).

    Only rank 0 passes write=True; the other ranks only check. Paths (data.root, run.dir) are
    compared resolved, so `runs/x` and `./runs/x/` are the same run.
    """
    from tidal_dist.job.fsutil import atomic_write_text

    run_dir = Path(cfg.run.dir)
    saved_path = run_dir / RUN_CONFIG_NAME
    if saved_path.exists():
        try:
            saved = config_from_dict(yaml.safe_load(saved_path.read_text()) or {}, str(saved_path))
        except (UserError, yaml.YAMLError) as e:
            raise UserError(f"run directory '{run_dir}' holds a config this version cannot read: "
                            f"{e}{start_over_hint(run_dir)}") from None
        changed = diff(saved, cfg)
        if changed:
            lines = "\n".join(f"  {k}: {a!r} (run dir) != {b!r} (now)" for k, a, b in changed)
            raise UserError(
                f"run directory '{run_dir}' was created with a different config:\n{lines}\n"
                f"use another run.dir, or the same settings to resume{start_over_hint(run_dir)}"
            )
        if write and diff(saved, cfg, ignore=frozenset()):
            atomic_write_text(saved_path, to_yaml(cfg))  # record the new mutable values
    elif write:
        atomic_write_text(saved_path, to_yaml(cfg))
    return run_dir
