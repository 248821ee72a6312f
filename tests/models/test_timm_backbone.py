"""timm backbones (models/timm_backbone.py): the network's contract from timm's own API for a CNN
and a ViT, their weights saved to local files and loaded back, every kind of wrong weights file
refused with the file and the keys named, and the input settings that follow the weights."""

import logging

import pytest
import timm
import torch
from safetensors.torch import save_file

from tidal_dist.config import Config, ModelConfig, load_config
from tidal_dist.job.errors import UserError
from tidal_dist.models import available_outputs, build_model
from tidal_dist.models.network import Heads
from tidal_dist.models.timm_backbone import (TimmBackbone, check_weights, resolve_input_settings,
                                             stage_indices)

CNN, VIT = "resnet10t", "vit_tiny_patch16_224"


def net_cfg(name, weights=None):
    return ModelConfig(backbone=f"timm:{name}", weights=None if weights is None else str(weights),
                       td_hidden=8)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Random-init weights of both models for 7 classes, as safetensors and as a torch file."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for name in (CNN, VIT):
        torch.manual_seed(0)
        state = timm.create_model(name, num_classes=7).state_dict()
        save_file(state, folder / f"{name}.safetensors")
        torch.save(state, folder / f"{name}.pt")
        files[name] = (folder / f"{name}.safetensors", folder / f"{name}.pt", state)
    return files


@pytest.mark.parametrize("name, stages", [(CNN, [1, 2, 3, 4]), (VIT, [2, 5, 8, 11])])
def test_the_contract_from_timms_own_api(name, stages):
    torch.manual_seed(0)
    net = build_model(net_cfg(name), 5, 3, Heads(td=True, loss=True)).eval()
    backbone = net.backbone
    assert isinstance(backbone, TimmBackbone) and backbone.stage_indices == stages
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
        embedding, features = backbone.features(x)
        plain = backbone.net(x)
    assert out["logits"].shape == (3, 5) and out["td_logits"].shape == (3, 5)
    assert out["loss_pred"].shape == (3,) and out["embedding"].shape == (3, backbone.embedding_dim)
    torch.testing.assert_close(out["logits"], plain)  # the classifier on the embedding is timm's forward
    assert [f.shape[1] for f in features] == list(backbone.stage_channels)
    assert all(f.dim() == 4 for f in features)  # NCHW: the heads pool them
    assert {"embedding", "mc_probs", "td_logits", "loss_pred"} <= available_outputs(net)


def test_stages_of_a_pyramid_and_of_a_single_resolution_model():
    pyramid = [{"reduction": r} for r in (2, 4, 8, 16, 32)]
    assert stage_indices(pyramid) == [1, 2, 3, 4]  # the four resolution stages, not the stem
    assert stage_indices([{"reduction": 16}] * 12) == [2, 5, 8, 11]  # the end of each quarter
    assert stage_indices([{"reduction": 16}] * 4) == [0, 1, 2, 3]
    with pytest.raises(UserError, match="need four"):
        stage_indices([{"reduction": 16}] * 3)


def test_an_unknown_name_lists_the_closest_ones():
    with pytest.raises(UserError) as e:
        build_model(net_cfg("resnet5O"), 5, 3)
    assert "'timm:resnet5O' is not a timm model" in str(e.value) and "resnet50" in str(e.value)
    with pytest.raises(UserError, match="'timm:NAME'"):
        load_config(None, ["model.backbone=vgg16"])


@pytest.mark.parametrize("name", [CNN, VIT])
@pytest.mark.parametrize("kind", [0, 1], ids=["safetensors", "torch"])
def test_weights_load_back_and_another_class_count_replaces_the_classifier(saved, name, kind,
                                                                           caplog):
    path, state = saved[name][kind], saved[name][2]
    same = build_model(net_cfg(name, path), 7, 3).backbone.net.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(same[key], value)
    with caplog.at_level(logging.INFO, logger="tidal_dist"):
        other = build_model(net_cfg(name, path), 3, 3).backbone
    assert "classifier" in caplog.text and "replaced for this dataset's 3 classes" in caplog.text
    assert other.num_classes == 3
    kept = [k for k in state if not k.startswith(("fc.", "head."))]
    torch.testing.assert_close(other.net.state_dict()[kept[0]], state[kept[0]])
    assert check_weights(name, str(path), 3, 3)[0].startswith(f"weights '{path}': classifier")
    assert check_weights(name, str(path), 7, 3) == []


def test_grey_images_get_the_first_conv_summed_over_rgb(saved):
    path, _, state = saved[CNN]
    net = build_model(net_cfg(CNN, path), 7, 1).backbone.net
    conv = net.pretrained_cfg["first_conv"] + ".weight"
    assert net.state_dict()[conv].shape[1] == 1


def test_wrong_weights_files_name_the_file_and_the_keys(saved, tmp_path):
    cnn_file, vit_file = saved[CNN][0], saved[VIT][0]
    with pytest.raises(UserError) as e:  # another architecture
        build_model(net_cfg(CNN, vit_file), 7, 3)
    text = str(e.value)
    assert f"'{vit_file}'" in text and "missing keys: " in text and "unexpected keys: " in text
    assert "blocks.0" in text and "conv1" in text

    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(cnn_file.read_bytes()[:5000])
    cut_pt = tmp_path / "cut.pt"
    cut_pt.write_bytes(saved[CNN][1].read_bytes()[:5000])
    module = tmp_path / "module.pt"
    torch.save(timm.create_model(CNN, num_classes=7), module)
    text_file = tmp_path / "notes.pt"
    text_file.write_text("not weights\n")
    not_a_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], not_a_dict)
    for path, why in ((truncated, "not a readable safetensors file"), (cut_pt, "truncated"),
                      (module, "pickles Python objects"), (text_file, "not a safetensors or torch"),
                      (not_a_dict, "does not hold a state_dict"),
                      (tmp_path / "absent.pt", "does not exist")):
        for check in (lambda: build_model(net_cfg(CNN, path), 7, 3),
                      lambda: check_weights(CNN, str(path), 7, 3)):
            with pytest.raises(UserError) as e:
                check()
            assert str(path) in str(e.value) and why in str(e.value), str(e.value)


def test_hub_weights_come_only_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UserError) as e:
        build_model(net_cfg(CNN, "hub"), 7, 3)
    text = str(e.value)
    assert "timm/resnet10t" in text and "pretrained=True" in text and "nothing is downloaded" in text


def test_hub_weights_load_from_a_filled_local_cache(saved, tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    cache = tmp_path / "cache"
    repo = timm.models.get_pretrained_cfg(CNN).hf_hub_id.split("@")[0]
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    (snapshot / "model.safetensors").write_bytes(saved[CNN][0].read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    net = build_model(net_cfg(CNN, "hub"), 7, 3).backbone.net
    torch.testing.assert_close(net.state_dict()["fc.weight"], saved[CNN][2]["fc.weight"])


def test_input_settings_follow_the_weights_unless_set():
    cfg = Config()
    cfg.model = net_cfg("resnet50.a1_in1k", "w.safetensors")
    filled = resolve_input_settings(cfg.data, cfg.model, 3)
    assert filled == ["data.image_size", "data.mean", "data.std", "data.interpolation"]
    assert cfg.data.image_size == 224 and cfg.data.interpolation == "bicubic"
    assert cfg.data.mean == pytest.approx([0.485, 0.456, 0.406])
    grey = Config()
    grey.model = net_cfg("resnet50.a1_in1k", "w.safetensors")
    grey.data.image_size, grey.data.interpolation = 64, "bilinear"
    assert resolve_input_settings(grey.data, grey.model, 1) == ["data.mean", "data.std"]
    assert grey.data.image_size == 64 and grey.data.mean == pytest.approx([0.449])
    plain = Config()
    plain.model = net_cfg(CNN)  # no weights: the dataset's own statistics
    assert resolve_input_settings(plain.data, plain.model, 3) == [] and plain.data.mean is None
