"""The data layer: import a source into WebDataset shards, then read them by id or as streams.

    prepare(spec, out)                     sources -> shards + manifest   (shards.py, sources.py)
    load_manifest / verify / load_labels   what was written, and checks    (manifest.py)
    load_keys / original_keys              each id's original file path or key (manifest.py)
    KeyCursor                              the same for ascending ids, streamed (flat memory)
    build_transform                        bytes -> normalised tensor      (transforms.py)
    RandomAccessReader, StreamingDataset   reading by id / exactly-once    (readers.py)
    ShardSource, ShardCache                where shards are (a folder or any URL webdataset
                                           opens); per-node verified copies (locations.py,
                                           shard_cache.py)
    epoch_assignment, LabeledDataset,      per-epoch rank split for training
    VisitSampler
    augmented_view                         SimCLR's random views, batched  (contrastive_views.py)
    imbalanced_pool                        long-tailed pools               (imbalance.py)
"""

from tidal_dist.data.imbalance import imbalanced_pool
from tidal_dist.data.locations import ShardSource
from tidal_dist.data.manifest import (KeyCursor, Manifest, ShardInfo, SplitInfo, load_keys, load_labels, load_manifest,
                                      original_keys, summary, verify)
from tidal_dist.data.readers import (LabeledDataset, RandomAccessReader, StreamingDataset, collate_samples,
                                     epoch_assignment, stream_loader, VisitSampler)
from tidal_dist.data.shard_cache import ShardCache
from tidal_dist.data.shards import prepare
from tidal_dist.data.sources import Source, open_source, parse_spec
from tidal_dist.data.transforms import build_transform

__all__ = [
    "KeyCursor", "LabeledDataset", "VisitSampler", "Manifest", "RandomAccessReader", "ShardCache", "ShardInfo",
    "ShardSource", "Source", "SplitInfo",
    "StreamingDataset", "build_transform", "collate_samples", "epoch_assignment", "imbalanced_pool",
    "load_keys", "load_labels", "load_manifest", "original_keys", "open_source", "parse_spec", "prepare", "stream_loader", "summary",
    "verify",
]
