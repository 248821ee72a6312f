"""A run's trained network for inference, without knowing its shapes: the class count, channels,
heads and normalisation all come from the run's config.yaml and its dataset's manifest.

    model = load_model("runs/nb")                 # the last committed cycle's model.pt
    out = model.predict([Image.open("x.png")])    # {"class", "name", "probability", "probs",
                                                  #  "td_uncertainty" (when it has a TD module)}
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tidal_dist.config import RUN_CONFIG_NAME, Config, load_config
from tidal_dist.cycle.loop import cycle_dir
from tidal_dist.cycle.predict import predictions, resolve_cycle
from tidal_dist.data.manifest import Manifest, load_manifest
from tidal_dist.data.transforms import ImageTransform, build_transform
from tidal_dist.job.errors import UserError
from tidal_dist.models.network import network_from_state


def build_network(cfg: Config, manifest: Manifest, state: dict[str, torch.Tensor]) -> nn.Module:
    in_channels = 1 if manifest.mode == "L" else 3
    return network_from_state(cfg.model, manifest.num_classes, in_channels, state).eval()


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
        out = {k: v.cpu().numpy() for k, v in predictions(self.network(x.to(self.device))).items()}
        out["class"] = out.pop("predicted")
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
