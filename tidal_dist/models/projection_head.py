"""SimCLR's projection head g(.) (Chen et al., ICML 2020, Sec. 2.1): an MLP with one hidden layer,
z = W2 ReLU(W1 h), on the backbone's pooled embedding h. The contrastive loss is taken on z; the
representation kept (the weights `tidal-dist pretrain` writes) is the backbone's, before g, which
the paper found the better representation (Sec. 4.2). The head itself is thrown away."""

from __future__ import annotations

from torch import Tensor, nn

PROJECTION_DIM = 128  # the paper's output width


class ProjectionHead(nn.Module):
    def __init__(self, embedding_dim: int, out_dim: int = PROJECTION_DIM) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embedding_dim, embedding_dim), nn.ReLU(inplace=True),
                                 nn.Linear(embedding_dim, out_dim))

    def forward(self, embedding: Tensor) -> Tensor:
        return self.net(embedding)
