import numpy as np

from lp_data import epoch_orders
from solutions import cosine_vs_local_steps, relu_locoprop, update_norm_vs_prox

TINY = (16, 8, 4, 8, 16)
X = np.random.default_rng(5).uniform(0, 1, (60, 16)).astype(np.float32)


def test_relu_locoprop_trains():
    run = relu_locoprop(X, TINY, epoch_orders(60, 4, 20, 0), lr=3e-4, num_epochs=4)
    assert not run.diverged and run.losses[-1] < run.losses[0]


def test_proximal_term_shrinks_the_update():
    norms = update_norm_vs_prox(TINY, X, [None, 10.0, 0.1, 0.001], lr=1e-3, local_steps=5)
    assert norms[None] > norms[0.1] > norms[0.001] > 0
    assert norms[10.0] <= norms[None] * 1.001


def test_cosine_vs_local_steps():
    cos = cosine_vs_local_steps(TINY, X, [1, 5, 20], layer=1, lr=1e-3, damping=1e-2)
    assert set(cos) == {1, 5, 20}
    assert all(-1 <= c <= 1 for c in cos.values())
    assert len({round(c, 6) for c in cos.values()}) == 3
