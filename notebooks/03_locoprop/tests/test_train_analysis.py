import json
import math

import numpy as np
import pytest

import lp_analysis
import lp_experiment as E
import lp_model
import lp_train
from lp_optimizers import make_optimizer
from lp_train import Run

TINY = (12, 6, 3, 6, 12)
ACTS = lp_model.layer_activations(TINY)
rng = np.random.default_rng(3)
IMAGES = rng.uniform(0, 1, (40, 12)).astype(np.float32)
ORDERS = np.stack([rng.permutation(40).reshape(4, 10) for _ in range(4)])
INIT = lp_model.glorot_init(TINY, 0)


def test_source_schedule():
    """lr 0 in epoch 0, linear warm-up, then linear decay; num_epochs - 1 epochs are trained."""
    assert [lp_train.lr_factor(e, 100, 5) for e in (0, 1, 4, 5, 98)] == pytest.approx([0, 0.2, 0.8, 1 - 1 / 95, 1 / 95])
    assert lp_train.trained_epochs(100) == 99
    with pytest.raises(ValueError):
        lp_train.lr_factor(0, 10, 10)
    with pytest.raises(ValueError):
        lp_train.trained_epochs(1)


@pytest.mark.parametrize("name", ["Adam", "LocoProp-M"])
def test_grid_members_are_independent_and_reproducible(name):
    """A grid of [lr, 0, lr] : members 0 and 2 give the same curve, member 1 never moves."""
    opt = make_optimizer(name, ACTS, **({"local_steps": 2} if name.startswith("LocoProp") else {}))
    lr = {"Adam": 3e-3, "LocoProp-M": 1e-4}[name]
    runs = lp_train.train_grid(opt, ACTS, IMAGES, [lr, 0.0, lr], [INIT] * 3, [ORDERS] * 3, num_epochs=4, warmup=1)
    a, still, b = runs
    assert a.eval_epochs == [0, 1, 2, 3] and len(a.epoch_losses) == 3 and not a.diverged
    assert a.losses[-1] < a.losses[0]
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5)
    np.testing.assert_allclose(still.losses, [still.losses[0]] * 4, rtol=1e-6)


def test_divergence_is_flagged_and_best_run_skips_it():
    runs = lp_train.train_grid(make_optimizer("SGD", ACTS), ACTS, IMAGES, [0.05, 1e4], [INIT] * 2, [ORDERS] * 2,
                               num_epochs=4, warmup=1, eval_every=2)
    good, bad = runs
    assert bad.diverged and bad.final_loss == math.inf and not good.diverged
    assert good.eval_epochs == [0, 2, 3]
    assert lp_train.best_run(runs) is good
    with pytest.raises(ValueError):
        lp_train.train_grid(make_optimizer("SGD", ACTS), ACTS, IMAGES, [0.1], [INIT] * 2, [ORDERS], 4, 1)


def test_grid_edge_and_extension():
    def r(lr, loss, div=False):
        return Run("x", lr, losses=[500.0, loss], diverged=div)
    assert lp_train.grid_edge([r(1e-3, 5), r(3e-3, 4), r(1e-2, 6)]) is None
    assert lp_train.grid_edge([r(1e-3, 3), r(3e-3, 4)]) == "low"
    assert lp_train.extension([r(1e-3, 3), r(3e-3, 4)]) == pytest.approx([3.33e-4, 1.11e-4])
    assert lp_train.extension([r(1e-3, 5), r(1e-2, 4)]) == pytest.approx([0.1, 1.0])
    assert lp_train.grid_edge([r(1e-3, 5), r(1e-2, 4), r(0.1, 0, div=True)]) is None     # divergence above brackets
    assert lp_train.grid_edge([r(1e-3, 0, True), r(1e-2, 0, True)]) == "all diverged"


def test_time_epochs_and_table():
    t = lp_train.time_epochs(make_optimizer("Adam", ACTS), ACTS, IMAGES, 1e-3, INIT, ORDERS, 4, 1, n_epochs=2)
    assert len(t["epoch_seconds"]) == 2 and all(s > 0 for s in t["epoch_seconds"])
    runs = {"Adam": [Run("Adam", 1e-3, losses=[9, 5.0]), Run("Adam", 1e-2, losses=[9, 4.0])]}
    tab = lp_train.table(runs, {"Adam": "defaults"}, {"Adam": t})
    assert tab.loc["Adam", "best lr"] == 1e-2 and tab.loc["Adam", "best inside grid"] == "NO (high edge)"


def test_paper_and_seed_claims():
    final = {"SGD": 10, "Momentum": 9, "AdaGrad": 9, "RMSProp": 8, "Adam": 7, "Adam (source)": 6.5,
             "Shampoo": 5, "K-FAC": 6, "LocoProp-M": 5.4}
    sec = {"Shampoo": 4, "K-FAC": 3, "LocoProp-M": 2}
    c = lp_train.paper_claims(final, sec)
    assert c["ratio_locoprop_m_to_best_first_order"] == pytest.approx(5.4 / 6.5)
    assert c["ratio_locoprop_m_to_best_second_order"] == pytest.approx(1.08)
    assert c["ratio_epoch_time_locoprop_m_to_faster_second_order"] == pytest.approx(2 / 3)
    assert c["claim_beats_first_order"] == c["claim_within_10pct_of_second_order"] == c["claim_faster_than_second_order"] == 1.0
    c = lp_train.paper_claims({**final, "LocoProp-M": 7.5}, {**sec, "LocoProp-M": 3.5})
    assert c["claim_beats_first_order"] == c["claim_within_10pct_of_second_order"] == c["claim_faster_than_second_order"] == 0.0
    s = lp_train.seed_claims({"locoprop": [5, 6, 7], "first_order": [6, 6, 6], "second_order": [5, 5, 5]})
    assert s == {"seeds": 3.0, "seeds_beats_first_order": 1.0, "seeds_within_10pct_of_second_order": 1.0}


def test_cosine_and_kfac_direction():
    assert lp_analysis.cosine([1, 0], [2, 0]) == pytest.approx(1.0)
    assert lp_analysis.cosine([1, 0], [0, 3]) == pytest.approx(0.0)
    (g, d), = lp_analysis.kfac_direction(INIT, ACTS, IMAGES[:10], [1], damping=1e8, fisher="empirical").values()
    assert lp_analysis.cosine(g, d) == pytest.approx(1.0, abs=1e-6)     # huge damping: the gradient itself
    (g, d), = lp_analysis.kfac_direction(INIT, ACTS, IMAGES[:10], [1], damping=1e-4, fisher="true").values()
    assert lp_analysis.cosine(g, d) < 0.999
    with pytest.raises(ValueError):
        lp_analysis.kfac_direction(INIT, ACTS, IMAGES[:10], [1], 1e-2, fisher="hessian")


def test_probe_run_records_cosines_without_changing_training():
    opt = make_optimizer("LocoProp-M", ACTS, local_steps=2)
    out = lp_analysis.probe_run(opt, ACTS, IMAGES, 1e-4, INIT, ORDERS, 4, 1, layer=1, every=1)
    assert out["epochs"] == [1, 2] and len(out["cos_update"]) == 2
    assert all(-1 <= c <= 1 for c in out["cos_update"] + out["cos_gradient"])
    plain = lp_train.train_grid(opt, ACTS, IMAGES, [1e-4], [INIT], [ORDERS], 4, 1)[0]
    assert out["final_loss"] == pytest.approx(plain.final_loss, rel=1e-5)


def test_stage_caches_pieces_and_respects_the_budget(tmp_path):
    stage = E.Stage(tmp_path, budget_s=100.0, log=lambda m: None)
    calls = []
    assert stage.piece("a", lambda: calls.append(1) or {"x": 1}, work=10)["x"] == 1
    assert stage.piece("a", lambda: calls.append(1) or {"x": 2}, work=10)["x"] == 1     # loaded, not recomputed
    assert calls == [1] and json.loads((tmp_path / "a.json").read_text())["work"] == 10
    fresh = E.Stage(tmp_path, budget_s=100.0, log=lambda m: None)      # a later command: history from the files
    fresh.done.append((10.0, 50.0, "k"))
    assert fresh.estimate(100.0, "k") > 100.0 and fresh.estimate(100.0, "new") > fresh.estimate(100.0, "k")
    assert fresh.piece("b", lambda: {"x": 3}, work=100.0, kind="k") is None and fresh.skipped == ["b"]


def test_experiment_end_to_end_tiny(tmp_path):
    """Every kind of piece on a 64-pixel 'image' set and three optimizers: grids (extended at edges),
    seeds, timing, probe; then a second pass over the same stage folder computes nothing."""
    imgs = np.random.default_rng(0).uniform(0, 1, (40, 64)).astype(np.float32)
    cfg = E.Config(widths=(64, 6, 3, 6, 64), source="mnist_5k", num_epochs=3, warmup=1, batch=20, refresh=2,
                   eval_every=1, grids={"SGD": (1e-3, 1e-2), "K-FAC": (1e-3, 1e-2), "LocoProp-M": (1e-4, 1e-3)},
                   max_extensions=1, time_epochs=1)
    ex = E.Experiment(cfg, stage=E.Stage(tmp_path, log=lambda m: None), images=imgs)
    assert ex.pieces_left() == 3 + 3 + 3 + 1
    out = ex.run_all()
    assert set(out["runs"]) == {"SGD", "K-FAC", "LocoProp-M"}
    assert all(len(rs) == 4 for rs in out["runs"].values())    # a best value at an edge of 2: always extended
    assert len(out["seed_runs"]["locoprop"]) == 3 and out["trio"] == {
        "locoprop": "LocoProp-M", "first_order": "SGD", "second_order": "K-FAC"}
    assert ex.pieces_left() == 0
    again = E.Stage(tmp_path, log=lambda m: None)
    E.Experiment(cfg, stage=again, images=imgs).run_all()
    assert again.computed == []
