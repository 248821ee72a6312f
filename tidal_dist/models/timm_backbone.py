"""`model.backbone=timm:NAME`: any timm image classifier as a backbone, with local weights only.

The network's contract (models/backbones.py) taken from timm's own API:

    features(x) -> (embedding, [f1, f2, f3, f4])
        final, stages = net.forward_intermediates(x, indices=STAGES, output_fmt="NCHW")
        embedding     = net.forward_head(final, pre_logits=True)   # pooled pre-logits
    classifier     = net.get_classifier()                          # the last Linear
    logits         = classifier(embedding)                         # = net(x)

Which four stages (`stage_indices`), chosen from `net.feature_info`:
* a model whose last four feature levels have four different reductions (ResNet, ConvNeXt,
  EfficientNet, Swin, ...: a CNN-style pyramid) gives those four, the outputs of its four
  resolution stages, as the built-in ResNets do (layer1..layer4; a stem level before them is left
  out). They are the TiDAL / Learning Loss heads' inputs in the papers.
* a single-resolution model (ViT, DeiT, ...: every block at the same reduction) gives the last
  block of each quarter of its depth (blocks 3, 6, 9, 12 of 12), so the heads see low- to
  high-level features as they do on a CNN; its patch tokens come back as an NCHW grid (prefix
  tokens dropped) and the heads average-pool them.

Weights are a local file (safetensors, or a state_dict saved with torch.save and read with
weights_only=True) or `hub`: what the local Hugging Face cache already holds, never a download.
A classifier of another class count is replaced (logged); any other missing, unexpected or
misshaped key is a UserError naming the file and the keys, checked by `run --dry-run` too.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from tidal_dist.job.errors import UserError

log = logging.getLogger("tidal_dist")

PREFIX = "timm:"


def timm_name(backbone: str) -> str | None:
    """NAME of `timm:NAME`, or None for a built-in backbone."""
    return backbone[len(PREFIX):].strip() if backbone.startswith(PREFIX) else None


def check_name(name: str) -> None:
    """UserError with the closest timm names when `name` is not a timm model."""
    import timm

    arch = name.split(".", 1)[0]  # resnet50.a1_in1k: the architecture, then a pretrained tag
    if timm.is_model(arch):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
    hint = f"; closest timm names: {', '.join(close)}" if close else ""
    raise UserError(f"config key 'model.backbone': 'timm:{name}' is not a timm model{hint} "
                    f"(timm.list_models() lists them all)")


def stage_indices(feature_info: list[dict]) -> list[int]:
    """The four feature levels the heads read (see the module docstring for why these)."""
    n = len(feature_info)
    if n < 4:
        raise UserError(f"config key 'model.backbone': this timm model exposes {n} feature "
                        f"levels; the TD and loss-prediction heads need four")
    last4 = [feature_info[i]["reduction"] for i in range(n - 4, n)]
    if len(set(last4)) == 4:
        return list(range(n - 4, n))
    return [n * k // 4 - 1 for k in range(1, 5)]


class TimmBackbone(nn.Module):
    """A timm model kept whole as `net` (state_dict keys are timm's own under `net.`)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        if not hasattr(net, "forward_intermediates"):
            raise UserError(f"config key 'model.backbone': timm model "
                            f"'{type(net).__name__}' has no forward_intermediates, so its stage "
                            f"features cannot be read; pick another architecture")
        self.net = net
        info = [dict(f) for f in net.feature_info]
        self.stage_indices = stage_indices(info)
        self.stage_channels = tuple(info[i]["num_chs"] for i in self.stage_indices)
        self.embedding_dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
        self.num_classes = net.num_classes

    @property
    def classifier(self) -> nn.Module:
        return self.net.get_classifier()

    def features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        final, stages = self.net.forward_intermediates(x, indices=self.stage_indices,
                                                       output_fmt="NCHW")
        return self.net.forward_head(final, pre_logits=True), list(stages)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        embedding, stages = self.features(x)
        return self.classifier(embedding), stages


def create_net(name: str, num_classes: int, in_channels: int) -> nn.Module:
    import timm

    check_name(name)
    # pretrained=False: weights come from model.weights alone, never from the network.
    kwargs = dict(pretrained=False, num_classes=num_classes, in_chans=in_channels)
    try:
        # Transformers take any input size (position embeddings resampled on the fly), as the
        # built-ins do with adaptive pooling; CNNs do anyway and refuse the argument.
        return timm.create_model(name, dynamic_img_size=True, **kwargs)
    except TypeError:
        pass
    try:
        return timm.create_model(name, **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"config key 'model.backbone': timm could not build '{name}' for "
                        f"{num_classes} classes and {in_channels} channel(s): {e}") from None


# ---------------------------------------------------------------------------------------------
# Weights


def hub_weights_file(name: str) -> Path:
    """The cached weights of timm model `name` in the local Hugging Face cache (offline)."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name) if timm.is_model(name.split(".")[0]) else None
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise UserError(f"config key 'model.weights': timm lists no Hugging Face weights for "
                        f"'{name}'; give a local weights file instead")
    repo = repo.split("@")[0]
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    raise UserError(
        f"config key 'model.weights': 'hub' found no cached weights of '{name}' (Hugging Face "
        f"repo {repo}) in the local cache ({cache}); nothing is downloaded at run time. On a "
        f"machine with network run\n  python -c \"import timm; timm.create_model('{name}', "
        f"pretrained=True)\"\nthen copy its ~/.cache/huggingface/hub (or set HF_HOME to a shared "
        f"copy), or save the weights to a file and set model.weights=FILE")


def weights_path(name: str, weights: str) -> Path:
    if weights == "hub":
        return hub_weights_file(name)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"config key 'model.weights': file '{path}' does not exist")
    return path


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """name -> tensor from a safetensors file or a weights_only torch file; UserError otherwise."""
    with open(path, "rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise UserError(f"model weights file '{path}' is not a readable safetensors file "
                            f"(truncated or damaged?): {e}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for these files
        text = str(e)
        if "Weights only load failed" in text and "GLOBAL" in text:
            why = ("it pickles Python objects (a whole nn.Module?), which are never unpickled; "
                   "save model.state_dict() instead (torch.save or safetensors)")
        elif head.startswith(b"PK\x03\x04") or "zip" in text or "EOF" in text:
            why = "it is a torch file, truncated or damaged"
        else:
            why = "it is not a safetensors or torch state_dict file"
        raise UserError(f"model weights file '{path}' cannot be loaded: {why} "
                        f"({text.splitlines()[0][:200]})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "state_dict_ema"):  # common checkpoint wrappers
            if isinstance(state.get(key), dict) and len(state) <= 8:
                state = state[key]
                break
    if not isinstance(state, dict) or not state or \
            not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise UserError(f"model weights file '{path}' does not hold a state_dict "
                        f"(name -> tensor)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _few(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


def fit_state_dict(net: nn.Module, state: dict[str, Tensor], path: Path) -> tuple[dict, list[str]]:
    """`state` made to fit `net`: timm's own checkpoint filter (e.g. a ViT's position embedding
    resampled to another image size), the first conv summed for other input channels, the
    classifier dropped when its shape differs. Returns (state, classifier keys dropped); raises
    UserError listing any other missing, unexpected or misshaped key."""
    from timm.models import adapt_input_conv

    filter_fn = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(dict(state), net)
        except Exception:  # noqa: BLE001 - another architecture's keys: reported below
            pass
    own = net.state_dict()
    first_conv = getattr(net, "pretrained_cfg", {}).get("first_conv")
    conv_key = f"{first_conv}.weight" if isinstance(first_conv, str) else None
    if conv_key in state and conv_key in own and state[conv_key].dim() == 4 \
            and state[conv_key].shape[1] != own[conv_key].shape[1] \
            and state[conv_key].shape[0] == own[conv_key].shape[0]:
        state[conv_key] = adapt_input_conv(own[conv_key].shape[1], state[conv_key])
    head = getattr(net, "pretrained_cfg", {}).get("classifier", "")
    heads = [head] if isinstance(head, str) else list(head or [])
    head_keys = [k for k in own for h in heads if h and k.startswith(h + ".")]
    dropped = []
    if any(k in state and state[k].shape != own[k].shape for k in head_keys):
        dropped = head_keys
        state = {k: v for k, v in state.items() if k not in head_keys}
    missing = sorted(k for k in own if k not in state and k not in dropped)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in state
                    if k in own and state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{what}: {_few(keys)}" for what, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected),
                  ("shape mismatches", shapes)) if keys]
        raise UserError(f"model weights file '{path}' does not fit timm model "
                        f"'{type(net).__name__}' ({'; '.join(parts)}); expected the weights of "
                        f"the same architecture")
    return state, dropped


def load_weights(net: nn.Module, name: str, weights: str) -> None:
    path = weights_path(name, weights)
    state, dropped = fit_state_dict(net, read_state_dict(path), path)
    net.load_state_dict(state, strict=False)  # checked above; only a replaced classifier is left out
    if dropped:
        log.info("weights '%s': classifier (%s) replaced for this dataset's %d classes", path,
                 ", ".join(dropped), net.num_classes)


def check_weights(name: str, weights: str, num_classes: int, in_channels: int) -> list[str]:
    """The load's checks on a model built without memory (meta device), for `run --dry-run`;
    returns notes (a replaced classifier)."""
    path = weights_path(name, weights)
    state = read_state_dict(path)
    with torch.device("meta"):
        net = create_net(name, num_classes, in_channels)
    _, dropped = fit_state_dict(net, state, path)
    return [f"weights '{path}': classifier ({', '.join(dropped)}) replaced for {num_classes} "
            f"classes"] if dropped else []


def build_timm_backbone(name: str, num_classes: int, in_channels: int,
                        weights: str | None = None) -> TimmBackbone:
    net = create_net(name, num_classes, in_channels)
    if weights is not None:
        load_weights(net, name, weights)
    return TimmBackbone(net)


# ---------------------------------------------------------------------------------------------
# Input settings that follow the weights


def pretrained_input(name: str) -> dict:
    """image size, mean, std and interpolation of timm model `name`'s pretrained config."""
    import timm

    check_name(name)
    cfg = timm.models.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    size = cfg.get("input_size")
    return {"image_size": int(size[-1]) if size else None, "mean": cfg.get("mean"),
            "std": cfg.get("std"), "interpolation": cfg.get("interpolation")}


def resolve_input_settings(data_cfg, model_cfg, channels: int) -> list[str]:
    """Fill data.image_size / mean / std / interpolation left unset from the pretrained config
    of a timm backbone with weights (in place); returns the keys filled. Built-ins and timm
    models without weights keep the dataset's own values."""
    name = timm_name(model_cfg.backbone)
    if name is None or model_cfg.weights is None:
        return []
    pre = pretrained_input(name)
    filled = []
    if data_cfg.image_size is None and pre["image_size"]:
        data_cfg.image_size = pre["image_size"]
        filled.append("data.image_size")
    for key in ("mean", "std"):
        values = pre[key]
        if getattr(data_cfg, key) is None and values:
            values = [float(v) for v in values]
            if channels == 1 and len(values) == 3:  # a grey dataset: one channel, their mean
                values = [sum(values) / 3]
            setattr(data_cfg, key, values)
            filled.append(f"data.{key}")
    if data_cfg.interpolation is None and pre["interpolation"] in ("bilinear", "bicubic", "nearest"):
        data_cfg.interpolation = pre["interpolation"]
        filled.append("data.interpolation")
    return filled
