"""Config: YAML + overrides, typed errors with suggestions, the run-directory binding."""

import pytest
import yaml

from tidal_dist.config import Config, bind_run_dir, diff, load_config, to_yaml
from tidal_dist.job.errors import UserError


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_yaml_and_overrides_are_typed(tmp_path):
    p = write(tmp_path, "train:\n  epochs: 7\n  lr: 1\nal:\n  subset_size: all\n")
    cfg = load_config(p, ["train.batch_size=64", "seed=3", "run.dir=runs/2024", "al.initial=10"])
    assert cfg.train.epochs == 7
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.al.subset_size == "all"
    assert cfg.train.batch_size == 64
    assert cfg.run.seed == 3  # bare key resolved to the one section that has it
    assert cfg.run.dir == "runs/2024"  # a number-looking path stays a string
    assert cfg.train.lr_decay_at == [0.8]


def test_shipped_configs_load():
    c10 = load_config("configs/cifar10.yaml")
    assert (c10.al.initial, c10.al.budget, c10.al.cycles, c10.al.subset_size) == (1000, 1000, 10, 10000)
    assert (c10.train.epochs, c10.train.batch_size, c10.train.lr) == (200, 128, 0.1)
    assert round(c10.train.lr_decay_at[0] * c10.train.epochs) == 160
    assert c10.model.backbone == "resnet18_cifar"
    demo = load_config("configs/fashion_mnist_demo.yaml")
    assert demo.model.backbone == "small_cnn"


@pytest.mark.parametrize("override, expected", [
    ("train.epoch=3", "did you mean train.epochs"),
    ("trian.epochs=3", "did you mean train.epochs"),
    ("model.backbon=x", "did you mean model.backbone"),
])
def test_unknown_key_suggests(override, expected):
    with pytest.raises(UserError, match=expected):
        load_config(None, [override])


@pytest.mark.parametrize("override, expected", [
    ("train.epochs=abc", "'train.epochs' expects int, got 'abc'"),
    ("train.epochs=1.5", "'train.epochs' expects int"),
    ("train.lr=fast", "'train.lr' expects float"),
    ("run.deterministic=maybe", "'run.deterministic' expects bool"),
    ("model.backbone=vgg", "'model.backbone' expects 'small_cnn'"),
    ("al.subset_size=some", "'al.subset_size' expects int | 'all'"),
    ("data.imbalance_ratio=0.5", "'data.imbalance_ratio': must be >= 1"),
    ("train.lr_decay_at=[2]", "train.lr_decay_at"),
    ("train.epochs", "expected key=value"),
    ("al.label_studio_image_url=ftp://host/queries", "'al.label_studio_image_url': an http:// or"),
    ("al.label_studio_image_url=queries/", "'al.label_studio_image_url': an http:// or"),
    ("al.label_studio_image_url=https://", "'al.label_studio_image_url': an http:// or"),
])
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(UserError, match=expected.replace("|", r"\|").replace("[", r"\[")):
        load_config(None, [override])


def test_yaml_file_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = write(tmp_path, "train:\n  epochz: 3\n")
    with pytest.raises(UserError, match=r"c\.yaml.*train\.epochz.*did you mean train\.epochs"):
        load_config(bad)
    broken = write(tmp_path, "train: [\n", "broken.yaml")
    with pytest.raises(UserError, match="broken.yaml.*not valid YAML"):
        load_config(broken)


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    from tidal_dist.cli import main

    rc = main(["train", "--config", "configs/fashion_mnist_demo.yaml", "train.epohcs=2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "unknown config key 'train.epohcs'" in err and "train.epochs" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("content, expected", [
    (None, "config file '{path}' is a folder: give a YAML file"),
    ("", "config file '{path}' is empty (no settings)"),
    ("# every key commented out\n# train:\n#   epochs: 3\n", "config file '{path}' is empty"),
])
def test_a_folder_or_an_empty_config_is_refused(tmp_path, capsys, content, expected):
    from tidal_dist.cli import main

    path = tmp_path / "configs"
    if content is None:
        path.mkdir()
    else:
        path = write(tmp_path, content, "empty.yaml")
    rc = main(["run", "--config", str(path), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and expected.format(path=path) in err and "Traceback" not in err


def test_resolved_config_roundtrip_and_diff():
    a = load_config(None, ["train.epochs=5"])
    b = load_config(None, ["train.epochs=6", "data.num_workers=7"])
    assert [k for k, *_ in diff(a, b)] == ["train.epochs"]  # num_workers may change on resume
    again = Config()
    from tidal_dist.config import apply_dict
    apply_dict(again, yaml.safe_load(to_yaml(a)), "roundtrip")
    assert diff(a, again, ignore=frozenset()) == []


def test_run_dir_refuses_another_config(tmp_path):
    run = str(tmp_path / "run")
    cfg = load_config(None, [f"run.dir={run}", "train.epochs=5"])
    bind_run_dir(cfg, write=True)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "epochs: 5" in saved
    bind_run_dir(load_config(None, [f"run.dir={run}", "train.epochs=5", "al.cycles=3"]), write=True)
    other = load_config(None, [f"run.dir={run}", "train.epochs=9", "train.lr=0.5"])
    with pytest.raises(UserError) as e:
        bind_run_dir(other, write=True)
    assert "train.epochs: 5 (run dir) != 9 (now)" in str(e.value)
    assert "train.lr" in str(e.value)
    assert "epochs: 5" in (tmp_path / "run" / "config.yaml").read_text()  # nothing overwritten


def test_run_dirs_and_dataset_roots_compare_as_resolved_paths(tmp_path, monkeypatch):
    (tmp_path / "data" / "shards").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    bind_run_dir(load_config(None, ["run.dir=runs/a", "data.root=data/shards"]), write=True)
    same = [f"run.dir={tmp_path}/runs/./a/", "data.root=link/shards/../shards"]
    assert bind_run_dir(load_config(None, same), write=True) == tmp_path / "runs" / "a"
    with pytest.raises(UserError, match="data.root"):
        bind_run_dir(load_config(None, ["run.dir=runs/a", "data.root=data"]), write=False)


@pytest.mark.parametrize("name, expected", [
    ("cifar100", {"al.initial": 2000, "al.budget": 2000, "al.cycles": 10, "model.backbone": "resnet18_cifar"}),
    ("fashion_mnist", {"al.initial": 1000, "al.subset_size": 10000, "data.root": "data/shards/fashion_mnist"}),
    ("cifar10_imb10", {"al.initial": 500, "al.budget": 500, "data.imbalance_ratio": 10.0}),
    ("inat2018", {"al.initial": 20000, "al.cycles": 5, "al.subset_size": 100000,
                  "model.backbone": "resnet50", "data.image_size": 224}),
])
def test_protocol_configs(name, expected):
    from tidal_dist.config import flatten

    flat = flatten(load_config(f"configs/{name}.yaml"))
    assert {k: flat[k] for k in expected} == expected
    assert (flat["train.epochs"], flat["train.lr"], flat["train.batch_size"]) == (200, 0.1, 128)
