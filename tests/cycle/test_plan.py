"""`tidal-dist run --dry-run` and the checks every real run makes before writing anything
(tidal_dist/cycle/plan.py): every shipped config against a stand-in dataset of its shape, bad settings
refused without a trace, the start-over message, and the disk-space check."""

import re

import pytest
import yaml

from tests.mp import REPO, run_module, tail
from tests.tmpfs import tiny_tmpfs  # noqa: F401 - a fixture
from tidal_dist.cli import main

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

# Stand-in datasets with each protocol's channels, image size and class count, and fewer samples
# (synthetic:N,C,HxW,channels; the test split holds max(N/5, C) samples). iNaturalist's images
# vary in size and its config resizes them to 224 (data.image_size), so the stand-in uses small
# 16x12 images of its 3 channels and 8142 classes.
STAND_INS = {
    "cifar10.yaml": ("synthetic:400,10,32x32,3", 200),
    "cifar10_imb10.yaml": ("synthetic:400,10,32x32,3", 200),
    "cifar100.yaml": ("synthetic:400,100,32x32,3", 200),
    "fashion_mnist.yaml": ("synthetic:300,10,28x28,1", 200),
    "fashion_mnist_demo.yaml": ("synthetic:300,10,28x28,1", 200),
    "fashion_mnist_study.yaml": ("synthetic:300,10,28x28,1", 200),
    "fashion_mnist_imb10.yaml": ("synthetic:300,10,28x28,1", 200),
    "fashion_mnist_imb100.yaml": ("synthetic:300,10,28x28,1", 200),
    "fashion_mnist_typiclust.yaml": ("synthetic:300,10,28x28,1", 200),
    "inat2018.yaml": ("synthetic:200,8142,16x12,3", 4096),
    "imagenet_timm.yaml": ("synthetic:200,1000,16x12,3", 4096),
    # the templates for one's own data: any number of classes, images resized to 224
    "custom_imagefolder.yaml": ("synthetic:200,5,16x12,3", 64),
    "custom_wds.yaml": ("synthetic:200,10,16x12,3", 64),
}
# Configs that name a weights file: a random-init stand-in of the same architecture.
WEIGHTS = {"imagenet_timm.yaml": "timm_resnet50_weights",
           "fashion_mnist_typiclust.yaml": "small_cnn16_grey_weights"}


@pytest.fixture(scope="module")
def timm_resnet50_weights(tmp_path_factory):
    import timm
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "resnet50.safetensors"
    save_file(timm.create_model("resnet50", num_classes=1000).state_dict(), path)
    return path
@pytest.fixture(scope="module")
def small_cnn16_grey_weights(tmp_path_factory):
    """What `tidal-dist pretrain` writes for small_cnn width 16 on grey 10-class images."""
    from safetensors.torch import save_file

    from tidal_dist.models import SmallCNN

    path = tmp_path_factory.mktemp("weights") / "small_cnn16.safetensors"
    save_file(SmallCNN(10, 1, width=16).state_dict(), path)
    return path


# The protocols label thousands of samples; the stand-ins hold hundreds, so the tests shrink the
# sizes that must fit the pool (and nothing else: cycles, batch, epochs, model stay the config's).
SHRINK = ["al.initial=20", "al.budget=10", "al.subset_size=50", "al.val_size=30"]


def dry_run(capsys, config, *overrides, world=None):
    argv = ["run", *(["--config", str(config)] if config else []), *overrides, "--dry-run"]
    if world:
        argv += ["--world-size", str(world)]
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_every_shipped_config_has_a_stand_in():
    assert {c.name for c in CONFIGS} == set(STAND_INS)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_dry_runs_on_a_dataset_of_its_shape(config, make_dataset, tmp_path,
                                                                 capsys, request):
    spec, shard_size = STAND_INS[config.name]
    root = make_dataset(spec, shard_size)
    run_dir = tmp_path / "run"
    weights = [f"model.weights={request.getfixturevalue(WEIGHTS[config.name])}"] \
        if config.name in WEIGHTS else []
    rc, out, err = dry_run(capsys, config, f"data.root={root}", f"run.dir={run_dir}", *SHRINK,
                           *weights)
    assert rc == 0, err
    cycles = yaml.safe_load(config.read_text())["al"]["cycles"]
    rows = [line for line in out.splitlines() if line.startswith("| ") and "cycle" not in line]
    assert len(rows) == cycles
    assert rows[0].split("|")[2].strip() == "20"  # cycle 0 trains on al.initial
    for word in ("steps/epoch/rank", "TD buffers", "checkpoint", "still needed", "free there"):
        assert word in out
    assert "nothing was written" in out and not run_dir.exists()
    if config.name == "imagenet_timm.yaml":  # input settings from the weights' pretrained
        # config, where the config has none
        assert "from the weights' pretrained config: data.image_size=224" in out


def test_wrong_timm_weights_are_refused_by_the_dry_run_and_the_run(make_dataset, tmp_path,
                                                                   capsys):
    import timm
    import torch
    from safetensors.torch import save_file

    root = make_dataset("synthetic:120,4,32x32,3", 40)
    other = tmp_path / "convnext.safetensors"
    save_file(timm.create_model("convnext_atto", num_classes=4).state_dict(), other)
    cnn = tmp_path / "resnet10t.pt"
    torch.save(timm.create_model("resnet10t", num_classes=9).state_dict(), cnn)
    base = [f"data.root={root}", "model.backbone=timm:resnet10t", "data.image_size=32",
            "al.initial=20", "train.batch_size=8"]
    run_dir = tmp_path / "run"
    rc, _, err = dry_run(capsys, None, *base, f"model.weights={other}", f"run.dir={run_dir}")
    assert rc == 2 and f"model weights file '{other}' does not fit" in err
    assert "missing keys: " in err and "stages.0" in err and "Traceback" not in err
    proc = run_module(["run", *base, f"model.weights={other}", f"run.dir={run_dir}"])
    assert proc.returncode == 2 and f"'{other}' does not fit" in proc.stderr, tail(proc)
    assert "Traceback" not in proc.stderr and not run_dir.exists()
    rc, out, _ = dry_run(capsys, None, *base, f"model.weights={cnn}", f"run.dir={run_dir}")
    assert rc == 0 and f"note: weights '{cnn}': classifier (fc.weight, fc.bias) replaced" in out
    rc, _, err = dry_run(capsys, None, *base, "model.backbone=timm:resnet10x",
                         f"run.dir={run_dir}")
    assert rc == 2 and "'timm:resnet10x' is not a timm model; closest timm names: " in err
    assert "resnet10t" in err and "Traceback" not in err


def test_the_plan_for_another_world_size(make_dataset, tmp_path, capsys):
    root = make_dataset(*STAND_INS["cifar10.yaml"])
    rc, out, _ = dry_run(capsys, REPO / "configs" / "cifar10.yaml", f"data.root={root}",
                         f"run.dir={tmp_path / 'r'}", *SHRINK, world=16)
    assert rc == 0
    assert "processes  16; batch 8 per rank (128 global)" in out
    assert "| 0 | 20 | 1 | 50 | 10 |" in out  # 20 labeled over 16 ranks x 8: one step


def test_uneven_batches_are_noted_and_single_sample_steps_refused(synthetic_dataset, tmp_path,
                                                                  capsys):
    base = [f"data.root={synthetic_dataset}", f"run.dir={tmp_path / 'r'}", "al.initial=20",
            "model.backbone=small_cnn"]
    rc, out, _ = dry_run(capsys, None, *base, "train.batch_size=16", world=3)
    assert rc == 0 and "not divisible by 3 processes" in out and "global batch is 18" in out
    rc, _, err = dry_run(capsys, None, *base, "train.batch_size=4", world=4)
    assert rc == 2 and "config key 'train.batch_size'" in err and "1 sample per rank" in err
    rc, _, _ = dry_run(capsys, None, *base, "train.batch_size=4", "train.sync_batchnorm=true",
                       world=4)
    assert rc == 0  # with global statistics 4 samples per step are enough


def test_the_plan_names_the_strategy_and_counts_the_heads(synthetic_dataset, tmp_path, capsys):
    base = [f"data.root={synthetic_dataset}", f"run.dir={tmp_path / 'r'}", "al.initial=20",
            "model.backbone=small_cnn"]
    params = {}
    for strategy, objective in (("random", "ce"), ("tidal_entropy", "tidal"), ("lloss", "lloss")):
        for record_td in ("true", "false"):
            rc, out, err = dry_run(capsys, None, *base, f"al.strategy={strategy}",
                                   f"train.record_td={record_td}")
            if strategy == "tidal_entropy" and record_td == "false":
                continue  # the TiDAL objective always has its module
            assert rc == 0, err
            assert f"strategy   {strategy}, trained with objective {objective}" in out
            params[strategy, record_td] = float(re.search(r"model ([0-9.]+)M", out).group(1))
    # the TD module and the loss head are counted in the model (and its checkpoints)
    assert params["random", "false"] < params["random", "true"] == params["tidal_entropy", "true"]
    assert params["lloss", "false"] > params["random", "false"]


@pytest.mark.parametrize("overrides, message", [
    (["al.initial=5000"], "config key 'al.initial': 5000 exceeds the pool's 203 samples"),
    (["train.batch_size=1"], "config key 'train.batch_size'"),
    (["data.image_size=0"], "data.image_size must be >= 1"),
    (["data.crop_padding=-2"], "data.crop_padding must be >= 0"),
    (["al.strategy=tidal_entropyy"], "unknown strategy 'tidal_entropyy'"),
    (["model.backbone=resnet18", "model.weights=/nowhere/r18.pt"], "'/nowhere/r18.pt' does not exist"),
    # what the strategy and its objective need: checked by the plan as by the run
    (["al.strategy=lloss", "train.batch_size=7"], "per-rank batch must be even"),
    (["al.strategy=tidal_entropy", "train.objective=ce", "train.record_td=false"],
     "config key 'train.record_td'"),
    (["al.strategy=lloss", "train.objective=tidal"], "only train.objective=lloss"),
])
def test_bad_settings_are_refused_naming_the_key(synthetic_dataset, tmp_path, capsys, overrides,
                                                message):
    rc, _, err = dry_run(capsys, None, f"data.root={synthetic_dataset}", f"run.dir={tmp_path / 'r'}",
                         "al.initial=20", *overrides)
    assert rc == 2 and message in err, err
    assert not (tmp_path / "r").exists()


def tiny(root, run_dir, *extra):
    return ["run", f"data.root={root}", "data.num_workers=0", "model.backbone=small_cnn",
            "model.width=4", "train.epochs=1", "train.batch_size=8", "al.initial=16",
            "al.budget=8", "al.cycles=1", "al.subset_size=24", f"run.dir={run_dir}", *extra]


def test_a_refused_run_leaves_nothing_that_refuses_the_corrected_one(synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    bad = run_module(tiny(synthetic_dataset, run_dir, "al.initial=5000"))
    assert bad.returncode == 2 and "al.initial" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not run_dir.exists()  # no config.yaml, no outcome.json: nothing
    good = run_module(tiny(synthetic_dataset, run_dir))
    assert good.returncode == 0, tail(good)


def test_a_budget_above_the_subset_is_noted_by_the_plan_and_the_run(synthetic_dataset, tmp_path,
                                                                    capsys):
    args = tiny(synthetic_dataset, tmp_path / "run", "al.budget=30")
    note = ("al.budget=30 is more than the al.subset_size=24 candidates drawn each cycle: each "
            "cycle queries all 24 of them")
    rc, out, _ = dry_run(capsys, None, *args[1:])
    assert rc == 0 and f"note: {note}" in out
    proc = run_module(args)
    assert proc.returncode == 0, tail(proc)
    assert f"tidal-dist run: note: {note}" in proc.stdout


def test_mixed_image_sizes_need_data_image_size(write_image_folder, tmp_path, capsys):
    raw = write_image_folder(tmp_path / "raw", {"train": {"a": 6, "b": 6}, "val": {"a": 2, "b": 2}})
    root = tmp_path / "shards"
    assert main(["prepare", "--source", f"imagefolder:{raw}", "--out", str(root)]) == 0
    capsys.readouterr()
    base = [f"data.root={root}", f"run.dir={tmp_path / 'run'}", "al.initial=4", "al.budget=2",
            "al.cycles=2", "model.backbone=small_cnn", "train.batch_size=4"]
    rc, _, err = dry_run(capsys, None, *base)
    assert rc == 2 and "set data.image_size" in err
    rc, out, _ = dry_run(capsys, None, *base, "data.image_size=8")
    assert rc == 0 and "images 3x8x8 after the transforms" in out


def test_a_run_dir_locked_by_an_earlier_version_says_how_to_start_over(synthetic_dataset,
                                                                       tmp_path):
    """Versions that wrote config.yaml before checking the config against the dataset left run
    dirs that refuse the corrected command. The messages say how to start over."""
    from tidal_dist.config import bind_run_dir, load_config

    run_dir = tmp_path / "run"
    bad_args = tiny(synthetic_dataset, run_dir, "al.initial=5000")
    bind_run_dir(load_config(None, bad_args[1:]), write=True)  # what such a version did
    same = run_module(bad_args)
    assert same.returncode == 2 and "al.initial" in same.stderr
    assert f"delete '{run_dir / 'config.yaml'}' to start over" in same.stderr
    fixed = run_module(tiny(synthetic_dataset, run_dir))
    assert fixed.returncode == 2 and "al.initial: 5000 (run dir) != 16 (now)" in fixed.stderr
    assert "holds no results yet" in fixed.stderr and str(run_dir / "config.yaml") in fixed.stderr
    (run_dir / "config.yaml").unlink()
    again = run_module(tiny(synthetic_dataset, run_dir))
    assert again.returncode == 0, tail(again)


# --------------------------------------------------------------------------------------------
# Disk space: a real, tiny filesystem (tmpfs, mounted by the test as root).


def test_a_run_dir_without_the_space_it_needs_is_refused(synthetic_dataset, tiny_tmpfs, capsys):
    fs = tiny_tmpfs("64k")
    rc, _, err = dry_run(capsys, None, *tiny(synthetic_dataset, fs / "run")[1:])
    assert rc == 2 and "config key 'run.dir'" in err and "needs about" in err and "free" in err
    real = run_module(tiny(synthetic_dataset, fs / "run"))
    assert real.returncode == 2 and "needs about" in real.stderr
    assert list(fs.iterdir()) == []  # nothing written
