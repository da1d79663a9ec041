"""The classifiers' training recipe: the Transformer encoders warm their learning rate up (a post-LN Transformer
trained with Adam at 1e-3 from step 0 fell to the class prior at full size: results/transformer_recipe_probe.json),
and the QRNN's schedule and stored-piece settings are the ones it had before."""
import numpy as np
import pytest
import keras

import bq_stages as ST
import bq_train as T


def _lr(sched, steps):
    return np.array([float(keras.ops.convert_to_numpy(sched(s))) for s in steps])


def test_warmup_ramps_linearly_then_follows_the_decay():
    lr, steps, warm = 1e-3, 1000, 100
    decay = keras.optimizers.schedules.PolynomialDecay(lr, decay_steps=steps, end_learning_rate=lr * 0.05)
    sched = T.lr_schedule(lr, steps, warm)
    ramp = _lr(sched, [0, 49, 99])
    assert np.allclose(ramp, _lr(decay, [0, 49, 99]) * np.array([1, 50, 100]) / warm, rtol=1e-5)
    assert ramp[0] < lr / 50                                      # the first Adam steps are small
    after = [100, 500, 999]
    assert np.allclose(_lr(sched, after), _lr(decay, after), rtol=1e-6)
    again = T.LinearWarmup.from_config(sched.get_config())          # round-trips (an optimizer's config holds it)
    assert np.allclose(_lr(again, [0, 99, 500]), _lr(sched, [0, 99, 500]))


def test_no_warmup_is_exactly_the_old_schedule():
    sched = T.lr_schedule(1e-3, 4000, 0)
    assert type(sched) is keras.optimizers.schedules.PolynomialDecay
    assert np.allclose(_lr(sched, [0, 2000, 4000]), [1e-3, 1e-3 - 0.5 * 0.95e-3, 5e-5], rtol=1e-3)


@pytest.mark.parametrize("bad", [-1, 4000, 5000])
def test_bad_warmup_is_refused(bad):
    with pytest.raises(ValueError, match="warmup_steps"):
        T.lr_schedule(1e-3, 4000, bad)


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_transformers_warm_up_and_qrnn_settings_are_unchanged(profile):
    K = ST.knobs(profile)
    for name, cfg in ST.classifier_configs(K).items():
        s = ST.classifier_settings(cfg, K, seed=0, split="abc")
        if cfg.encoder == "qrnn":
            # exactly what the QRNN pieces were stored with before warmup existed: their stored results stay valid
            assert s == ST._settings(cfg=cfg, steps=K["steps"], batch=K["batch"], lr=K["lr"], seed=0, split="abc")
        else:
            assert 0 < s["warmup"] == ST.warmup_steps(K, cfg) < K["steps"], name



@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_seq2seq_warms_up_and_its_stored_settings_name_the_warmup(profile):
    """A seq2seq piece stored before the warmup (settings without it) must not be loaded: it trains again."""
    import bq_seq2seq as S2
    K = ST.knobs(profile)
    assert 0 < K["s2s_warmup"] < K["s2s_steps"]
    cfg = S2.Seq2SeqConfig()
    s = ST.seq2seq_settings(cfg, K, seed=0, n_pairs=10)
    old = ST._settings(cfg=cfg, steps=K["s2s_steps"], batch=K["batch"], lr=K["s2s_lr"], seed=0,
                       beam_inputs=K["beam_inputs"], n_pairs=10)
    assert s["warmup"] == K["s2s_warmup"] and {k: v for k, v in s.items() if k != "warmup"} == old
