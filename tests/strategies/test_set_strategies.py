"""Strategies with known answers: classifier margins, BALD, Core-set, BADGE, tidal_cluster, and the
selection algorithms under them (k-center greedy, factorised distances, k-means++, k-means)."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from tests.mp import REPO, cpu_env
from tidal_dist.config import ALConfig
from tidal_dist.job.errors import UserError
from tidal_dist.selection import Factors, k_center_greedy, kmeans, kmeans_pp
from tidal_dist.selection.distances import nearest
from tidal_dist.strategies import (Outputs, ScoreContext, SelectionInputs, check_outputs,
                                   get_strategy)
from tidal_dist.strategies.bald import dropout_keep
from tidal_dist.strategies.tidal_cluster import round_robin


def out(logits, **kw):
    logits = torch.as_tensor(logits, dtype=torch.float32)
    return Outputs(ids=kw.pop("ids", torch.arange(len(logits))), logits=logits, **kw)


def test_margin_and_least_confidence():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]]))
    margin = get_strategy("margin")
    u = margin.uncertainty(out(logits), ScoreContext(0))
    np.testing.assert_allclose(margin.reported(u).numpy(), [0.2, 0.85], atol=1e-6)
    assert u[0] > u[1]
    lc = get_strategy("least_confidence").uncertainty(out(logits), ScoreContext(0))
    np.testing.assert_allclose(lc.numpy(), [0.5, 0.1], atol=1e-6)


def test_bald_prefers_disagreeing_passes_over_a_flat_agreeing_distribution():
    torch.manual_seed(0)
    width, classes = 64, 4
    classifier = nn.Linear(width, classes, bias=False)
    with torch.no_grad():  # unit u votes for class u % 4, strongly
        classifier.weight.zero_()
        for u in range(width):
            classifier.weight[u % classes, u] = 8.0
    embedding = torch.zeros(2, width)
    embedding[0, [0, 1, 2, 3]] = 1.0  # four units, one per class: dropout decides the winner
    # sample 1: all zeros -> every pass gives the same uniform distribution (max entropy)
    o = out(torch.zeros(2, classes), embedding=embedding, classifier=classifier,
            ids=torch.tensor([10, 11]))
    ctx = ScoreContext(cycle_seed=3, al=ALConfig(mc_passes=10, mc_dropout=0.5))
    bald = get_strategy("bald").uncertainty(o, ctx)
    assert bald[1].item() == pytest.approx(0.0, abs=1e-9)  # agreeing passes: no information
    assert bald[0].item() > 0.3
    entropy = get_strategy("entropy").uncertainty(o, ctx)
    assert entropy[1] > entropy[0] or entropy[1] == pytest.approx(math.log(4))  # entropy would pick 1


def test_bald_masks_are_a_function_of_id_pass_and_seed_only():
    a = dropout_keep(np.array([5, 6, 7]), 2, 9, 32, 0.5)
    b = dropout_keep(np.array([7, 5]), 2, 9, 32, 0.5)
    np.testing.assert_array_equal(b, a[[2, 0]])  # batch order/composition don't matter
    assert not np.array_equal(a, dropout_keep(np.array([5, 6, 7]), 3, 9, 32, 0.5))
    assert not np.array_equal(a, dropout_keep(np.array([5, 6, 7]), 2, 10, 32, 0.5))
    many = dropout_keep(np.arange(2000), 0, 1, 64, 0.5)
    assert abs(many.mean() - 0.5) < 0.01


def naive_k_center(x, centres, k):
    d = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(-1).min(1) if len(centres) else \
        np.full(len(x), np.inf)
    picks = []
    for _ in range(k):
        i = int(np.flatnonzero(d == d.max())[0])
        picks.append(i)
        d = np.minimum(d, ((x - x[i]) ** 2).sum(-1))
    return picks


def test_k_center_takes_the_far_cluster_first():
    rng = np.random.default_rng(0)
    labeled = rng.normal(0, 0.1, (20, 2))
    near = rng.normal(0, 0.1, (50, 2))
    far = rng.normal(10, 0.1, (5, 2))
    x = np.concatenate([near, far]).astype(np.float32)
    picked, d2 = k_center_greedy(torch.from_numpy(x), torch.from_numpy(labeled.astype(np.float32)), 2)
    assert picked[0] >= 50  # the far cluster
    assert d2[0] > 150 and d2[0] >= d2[1]


@pytest.mark.parametrize("with_centres", [True, False])
def test_k_center_blocks_give_the_textbook_picks(with_centres):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    centres = rng.normal(size=(30, 8)).astype(np.float32) if with_centres else np.zeros((0, 8), np.float32)
    picked, _ = k_center_greedy(torch.from_numpy(x), torch.from_numpy(centres), 70, block=16)
    assert picked.tolist() == naive_k_center(x.astype(np.float64), centres.astype(np.float64), 70)


def test_factorised_distances_equal_the_explicit_outer_products():
    rng = np.random.default_rng(2)
    a, h = rng.normal(size=(40, 5)), rng.normal(size=(40, 7))
    g = np.einsum("nc,nd->ncd", a, h).reshape(40, -1)  # what BADGE never builds
    points = Factors([torch.tensor(a), torch.tensor(h)])
    centres = points.take(slice(0, 6))
    got, arg = nearest(points, centres, tile=17)  # a tiny tile: several tiles in both directions
    explicit = ((g[:, None, :] - g[None, :6, :]) ** 2).sum(-1)
    np.testing.assert_allclose(got.numpy(), explicit.min(1), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(arg.numpy(), explicit.argmin(1))
    np.testing.assert_allclose(points.sq_norms().numpy(), (g ** 2).sum(1), rtol=1e-5)


def test_kmeans_pp_draws_in_proportion_to_squared_distance():
    x = torch.tensor([[3.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    points = Factors([x])
    d2 = ((x - x[0]) ** 2).sum(1).numpy()  # first centre: the largest norm, point 0
    expected = d2 / d2.sum()
    counts = np.zeros(4)
    for seed in range(1000):
        picked, _ = kmeans_pp(points, 2, seed, block=1)
        assert picked[0] == 0
        counts[int(picked[1])] += 1
    np.testing.assert_allclose(counts / counts.sum(), expected, atol=0.05)  # ~3 sigma
    a, _ = kmeans_pp(points, 4, seed=5)
    b, _ = kmeans_pp(points, 4, seed=5)
    assert a.tolist() == b.tolist() and sorted(a.tolist()) == [0, 1, 2, 3]


def test_badge_picks_distinct_uncertain_gradients():
    rng = np.random.default_rng(3)
    n, classes, width = 300, 5, 16
    logits = rng.normal(0, 4, (n, classes)).astype(np.float32)
    emb = rng.normal(size=(n, width)).astype(np.float32)
    inputs = SelectionInputs(ids=np.arange(n), uncertainty=np.zeros(n),
                             kept={"logits": logits, "embedding": emb}, labeled={}, k=20, seed=4,
                             device=torch.device("cpu"))
    badge = get_strategy("badge")
    a = badge.select(inputs)
    assert len(set(a.indices.tolist())) == 20
    assert badge.select(inputs).indices.tolist() == a.indices.tolist()  # seeded
    p = torch.softmax(torch.tensor(logits, dtype=torch.float64), 1)
    norms = ((1 - p.max(1).values) ** 2 + (p ** 2).sum(1) - p.max(1).values ** 2) * \
        (torch.tensor(emb) ** 2).sum(1)
    assert a.indices[0] == int(norms.argmax())  # the largest gradient embedding first


def test_round_robin_takes_one_per_group_smallest_groups_first():
    groups = np.array([0, 0, 1, 0, 2, 1])  # candidates listed best first
    assert round_robin(groups, 3).tolist() == [0, 2, 4]
    assert round_robin(groups, 5).tolist() == [0, 1, 2, 4, 5]  # round 2: group 2 empty


def test_tidal_cluster_picks_from_distinct_clusters():
    rng = np.random.default_rng(5)
    centres = np.array([[0, 0], [20, 0], [0, 20]], dtype=np.float32)
    emb = np.concatenate([c + rng.normal(0, 0.5, (30, 2)) for c in centres]).astype(np.float32)
    unc = np.concatenate([np.full(30, 3.0), np.full(30, 2.0), np.full(30, 1.0)])
    unc += rng.random(90) * 0.1
    inputs = SelectionInputs(ids=np.arange(90) * 2, uncertainty=unc, kept={"embedding": emb},
                             labeled={}, k=3, seed=1, device=torch.device("cpu"),
                             al=ALConfig(cluster_factor=30))
    picks = get_strategy("tidal_cluster").select(inputs).indices
    assert sorted(p // 30 for p in picks.tolist()) == [0, 1, 2]
    for p in picks:  # the most uncertain of its cluster
        group = slice(p // 30 * 30, p // 30 * 30 + 30)
        assert unc[p] == unc[group].max()
    plain = np.argsort(-unc)[:3]  # top-k would take all three from cluster 0
    assert {p // 30 for p in plain} == {0}


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(6)
    x = np.concatenate([c + rng.normal(0, 0.3, (40, 3)) for c in ([0, 0, 0], [9, 9, 9], [-9, 9, 0])])
    labels, centroids = kmeans(torch.tensor(x, dtype=torch.float32), 3, seed=0)
    assert len(set(labels[:40].tolist())) == 1 and len(set(labels.tolist())) == 3
    assert centroids.shape == (3, 3)


def test_strategies_refuse_a_network_without_what_they_read():
    with pytest.raises(UserError, match="dropout point"):
        check_outputs(get_strategy("bald"), {"logits", "td_logits"}, "ce")
    with pytest.raises(UserError, match="train.record_td=true"):
        check_outputs(get_strategy("tidal_entropy"), {"logits", "embedding", "mc_probs"}, "ce")
    with pytest.raises(UserError, match="loss prediction head"):
        check_outputs(get_strategy("lloss"), {"logits", "td_logits"}, "tidal")
    check_outputs(get_strategy("coreset"), {"logits", "embedding", "mc_probs"}, "ce")


ADDRESS_SPACE_CHILD = r"""
import resource, sys
import numpy as np, torch
torch.set_num_threads(1)
from tidal_dist.strategies import SelectionInputs, get_strategy

def vm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

n, width, classes = 40_000, 8, 4
rng = np.random.default_rng(0)
emb = rng.normal(size=(n, width)).astype(np.float32)
logits = rng.normal(size=(n, classes)).astype(np.float32)
labeled = rng.normal(size=(2_000, width)).astype(np.float32)
headroom = 1_500 * 2**20
assert n * n * 4 > headroom  # an N x N float32 matrix would not fit
resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + headroom, resource.RLIM_INFINITY))
for name, kept, lab in (("coreset", {"embedding": emb}, {"embedding": labeled}),
                        ("badge", {"logits": logits, "embedding": emb}, {})):
    got = get_strategy(name).select(SelectionInputs(
        ids=np.arange(n), uncertainty=np.zeros(n), kept=kept, labeled=lab, k=100, seed=0,
        device=torch.device("cpu")))
    assert len(np.unique(got.indices)) == 100, name
    print(name, "ok")
"""


def test_coreset_and_badge_never_build_an_n_by_n_matrix():
    proc = subprocess.run([sys.executable, "-c", ADDRESS_SPACE_CHILD], cwd=REPO,
                          env=cpu_env({"OMP_NUM_THREADS": "1"}), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0 and "coreset ok" in proc.stdout and "badge ok" in proc.stdout, \
        proc.stdout + proc.stderr[-3000:]
