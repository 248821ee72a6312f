"""One rank of the real multi-process streaming test, launched by torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node 2 stream_worker.py OUT ROOT

Rank and world size come from torchrun's environment (no process group is needed). Each rank
streams the pool split through 2 DataLoader workers and writes the ids it saw to OUT/ids-rank{r}.txt.
"""

import sys
from pathlib import Path

from tidal_dist.data import StreamingDataset, build_transform, load_manifest, stream_loader
from tidal_dist.job import distributed


def main() -> None:
    out, root = Path(sys.argv[1]), Path(sys.argv[2])
    dataset = StreamingDataset(root, "pool", build_transform("none", load_manifest(root), train=False))
    assert (dataset.rank, dataset.world_size) == (distributed.rank(), 2), "expected 2 ranks from torchrun"
    ids = [int(i) for batch_ids, _, _ in stream_loader(dataset, batch_size=16, num_workers=2)
           for i in batch_ids]
    (out / f"ids-rank{dataset.rank}.txt").write_text("\n".join(map(str, ids)) + "\n")


if __name__ == "__main__":
    main()
