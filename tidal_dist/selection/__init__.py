"""Selection algorithms the query strategies use: top-k by score, k-center greedy, k-means++
seeding and k-means. Pure functions of their inputs (no model, no files), so any rank, or a test,
can run them; the set-based ones take torch tensors and run on whatever device those are on."""

from tidal_dist.selection.kcenter import k_center_greedy
from tidal_dist.selection.kmeans import Factors, kmeans, kmeans_pp
from tidal_dist.selection.topk import top_k

__all__ = ["Factors", "k_center_greedy", "kmeans", "kmeans_pp", "top_k"]
