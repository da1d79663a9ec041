import math

import numpy as np
import pytest
import tensorflow as tf

from lp_analysis import CosineProbe, cosine, kfac_direction
from lp_locoprop import LocoProp
from lp_model import Autoencoder
from lp_train import (OPTIMIZERS, KerasOptimizer, Run, best_runs, lr_factor, make_optimizer, sweep,
                      train_run, warm_up)

TINY = (12, 6, 3, 6, 12)
rng = np.random.default_rng(3)
IMAGES = rng.uniform(0, 1, (40, 12)).astype(np.float32)
ORDERS = np.stack([rng.permutation(40).reshape(4, 10) for _ in range(3)])


def test_lr_schedule_warmup_then_linear_decay():
    assert [lr_factor(e, 10, 2) for e in range(10)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    assert lr_factor(0, 1, 1) == 1.0


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_runs_and_is_reproducible(name):
    """Same init, same data order, reset state: two runs at the same LR give the same curve."""
    model = Autoencoder(TINY, seed=0)
    opt = make_optimizer(name, model, **({"local_steps": 2} if name.startswith("LocoProp") else {}))
    warm_up(opt, IMAGES[ORDERS[0, 0]])
    lr = {"SGD": 0.05, "Momentum": 0.02, "AdaGrad": 0.05, "RMSProp": 3e-3, "Adam": 3e-3, "Shampoo": 3e-3,
          "K-FAC": 3e-3, "LocoProp-S": 1e-4, "LocoProp-M": 1e-4}[name]
    a = train_run(model, opt, IMAGES, ORDERS, lr, warmup=1)
    b = train_run(model, opt, IMAGES, ORDERS, lr, warmup=1)
    assert len(a.losses) == 4 and len(a.wall) == 4 and not a.diverged
    assert a.losses[-1] < a.losses[0]
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5)
    assert a.state_bytes == opt.state_bytes()


def test_keras_state_memory_counts_slots():
    model = Autoencoder(TINY)
    assert KerasOptimizer(model, "SGD").state_bytes() == 0
    assert KerasOptimizer(model, "Adam").state_bytes() == 2 * 4 * model.n_params
    with pytest.raises(ValueError):
        make_optimizer("Lion", model)


def test_divergence_is_flagged_and_best_run_skips_it():
    model = Autoencoder(TINY, seed=0)
    runs = sweep(model, ["SGD"], {"SGD": [0.05, 1e4]}, IMAGES, ORDERS, warmup=1)
    good, bad = runs["SGD"]
    assert bad.diverged and bad.final_loss == math.inf and not good.diverged
    assert best_runs(runs)["SGD"] is good
    r = Run("x", 1.0, losses=[3.0, 2.0], epoch_seconds=[1.0, 3.0, 2.0])
    assert r.final_loss == 2.0 and r.seconds_per_epoch == 2.0


def test_cosine():
    assert cosine([1, 0], [2, 0]) == pytest.approx(1.0)
    assert cosine([1, 0], [0, 3]) == pytest.approx(0.0)
    assert cosine([[1, 1]], [[-1, -1]]) == pytest.approx(-1.0)


def test_kfac_direction_tends_to_gradient_for_huge_damping():
    model = Autoencoder(TINY, seed=1)
    x = tf.constant(IMAGES[:10])
    (g, d), = kfac_direction(model, x, [1], damping=1e8, fisher="empirical").values()
    assert cosine(g, d) == pytest.approx(1.0, abs=1e-6)
    (g, d), = kfac_direction(model, x, [1], damping=1e-4, fisher="empirical").values()
    assert cosine(g, d) < 0.999


def test_probe_records_update_and_gradient_cosines():
    model = Autoencoder(TINY, seed=2)
    opt = LocoProp(model, local_steps=3)
    probe = CosineProbe(opt, layers=[0, 2], damping=1e-2, every=2)
    run = train_run(model, opt, IMAGES, ORDERS, 1e-4, warmup=1, probe=probe)
    assert probe.steps == [0, 2, 4, 6, 8, 10] and len(run.losses) == 4
    for i in (0, 2):
        assert len(probe.cos_update[i]) == 6
        assert all(-1.0 <= c <= 1.0 for c in probe.cos_update[i] + probe.cos_gradient[i])
    # a plain-SGD "update" is the gradient itself: the probe must then report identical cosines
    sgd = make_optimizer("SGD", model)
    p2 = CosineProbe(sgd, layers=[1], damping=1e-2, every=1, fisher="empirical")
    p2(0, tf.constant(IMAGES[:10]), tf.constant(0.01))
    assert p2.cos_update[1][0] == pytest.approx(p2.cos_gradient[1][0], abs=1e-4)


def test_paper_claims_from_runs():
    from lp_train import paper_claims

    def r(loss, sec):
        return Run("x", 1.0, losses=[9.0, loss], epoch_seconds=[sec])
    best = {"SGD": r(10, 1), "Momentum": r(9, 1), "AdaGrad": r(9, 1), "RMSProp": r(8, 1), "Adam": r(7, 1),
            "Shampoo": r(5, 4), "K-FAC": r(6, 3), "LocoProp-M": r(5.4, 2)}
    c = paper_claims(best)
    assert c["ratio_locoprop_m_to_best_first_order"] == pytest.approx(5.4 / 7)
    assert c["ratio_locoprop_m_to_best_second_order"] == pytest.approx(1.08)
    assert c["ratio_epoch_time_locoprop_m_to_faster_second_order"] == pytest.approx(2 / 3)
    assert c["claim_beats_first_order"] == c["claim_within_10pct_of_second_order"] == c["claim_faster_than_second_order"] == 1.0
    best["LocoProp-M"] = r(7.5, 3.5)
    c = paper_claims(best)
    assert c["claim_beats_first_order"] == c["claim_within_10pct_of_second_order"] == c["claim_faster_than_second_order"] == 0.0
