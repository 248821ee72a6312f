"""A run's trained network for inference, without knowing its shapes: the class count, channels,
heads and normalisation all come from the run's config.yaml and its dataset's manifest.

    model = load_model("runs/nb")                 # the last committed cycle's model.pt
    out = model.predict([Image.open("x.png")])    # {"class", "name", "probability", "probs",
                                                  #  "td_uncertainty" (when it has a TD module)}
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tidal_dist.config import RUN_CONFIG_NAME, Config, load_config
from tidal_dist.cycle.loop import committed_cycles, cycle_dir
from tidal_dist.data.manifest import Manifest, load_manifest
from tidal_dist.data.transforms import ImageTransform, build_transform
from tidal_dist.job.errors import UserError
from tidal_dist.models.network import Heads, build_model
from tidal_dist.strategies.base import entropy_of


def heads_of(state: dict[str, torch.Tensor]) -> Heads:
    """Which heads a saved Network had, from its parameter names."""
    return Heads(td=any(k.startswith("td_module.") for k in state),
                 loss=any(k.startswith("loss_module.") for k in state))


def build_network(cfg: Config, manifest: Manifest, state: dict[str, torch.Tensor]) -> nn.Module:
    """The Network `state` was saved from, with `state` loaded; pretrained-weight files are not
    read (the state replaces them)."""
    in_channels = 1 if manifest.mode == "L" else 3
    model_cfg = replace(cfg.model, weights=None)
    network = build_model(model_cfg, manifest.num_classes, in_channels, heads_of(state))
    if any(k.startswith("module.") for k in state):  # saved through a wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    network.load_state_dict(state)
    return network.eval()


def outputs_of(network: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample predictions of an eval-mode batch: class, probability, probs, td_uncertainty
    (TiDAL's TD-entropy, the entropy of the TD module's predicted distribution, Kye et al. ICCV
    2023) where the network has the module."""
    out = network(x)
    probs = torch.softmax(out["logits"].float(), dim=1)
    probability, predicted = probs.max(dim=1)
    result = {"class": predicted, "probability": probability, "probs": probs}
    if "td_logits" in out:
        result["td_uncertainty"] = entropy_of(out["td_logits"].float())
    return result


def resolve_cycle(run_dir: Path, cycle: int) -> int:
    n = committed_cycles(run_dir)
    if n == 0:
        raise UserError(f"run dir '{run_dir}': no committed cycle yet, so no trained model")
    k = cycle + n if cycle < 0 else cycle
    if not 0 <= k < n:
        raise UserError(f"--cycle {cycle}: run dir '{run_dir}' has cycles 0..{n - 1}")
    return k


@dataclass
class TrainedModel:
    network: nn.Module  # models.Network in eval mode
    class_names: list[str]
    transform: ImageTransform  # bytes -> normalised tensor, the run's eval transform
    cycle: int
    device: torch.device

    def to_tensor(self, image: Any) -> torch.Tensor:
        """A PIL image, encoded bytes or a path -> one normalised [C, H, W] tensor."""
        if isinstance(image, (str, Path)):
            image = Path(image).read_bytes()
        if not isinstance(image, (bytes, bytearray)):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            image = buf.getvalue()
        return self.transform(bytes(image))

    @torch.inference_mode()
    def predict(self, images: list[Any] | torch.Tensor) -> dict[str, np.ndarray]:
        """Images (PIL, bytes, paths) or an already-normalised batch [B, C, H, W]."""
        x = images if isinstance(images, torch.Tensor) else \
            torch.stack([self.to_tensor(i) for i in images])
        out = {k: v.cpu().numpy() for k, v in outputs_of(self.network, x.to(self.device)).items()}
        out["name"] = np.array([self.class_names[c] for c in out["class"]])
        return out


def load_model(run_dir: str | Path, cycle: int = -1, device: str = "cpu") -> TrainedModel:
    """Cycle `cycle` (negative: from the end) of the run's committed models."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_CONFIG_NAME).is_file():
        raise UserError(f"run dir '{run_dir}': no {RUN_CONFIG_NAME} (not a run directory)")
    cfg = load_config(run_dir / RUN_CONFIG_NAME)
    k = resolve_cycle(run_dir, cycle)
    manifest = load_manifest(cfg.data.root)
    state = torch.load(cycle_dir(run_dir, k) / "model.pt", map_location="cpu", weights_only=True)
    network = build_network(cfg, manifest, state).to(device)
    transform = build_transform(cfg.data.eval_transform, manifest, train=False,
                                image_size=cfg.data.image_size)
    return TrainedModel(network, list(manifest.class_names), transform, k, torch.device(device))
