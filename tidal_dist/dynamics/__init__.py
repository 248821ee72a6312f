"""Training dynamics (TD): the live per-rank rows on the device, moved between ranks once per epoch
(state.py), and the committed memory-mapped buffers in the run dir (buffer.py).
docs/td-gathering.md has the design and its cost model."""

from tidal_dist.dynamics.buffer import STATS_COLUMNS, TDBuffer, write_buffers
from tidal_dist.dynamics.state import DeviceTD, EpochLayout, NoTD, check_epoch_probs_size

__all__ = ["STATS_COLUMNS", "DeviceTD", "EpochLayout", "NoTD", "TDBuffer", "check_epoch_probs_size",
           "write_buffers"]
