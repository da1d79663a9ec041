"""The pure first-order updates against the tools they reproduce: Keras 3's optimizers (Keras defaults)
and TensorFlow 1's tf.compat.v1.train optimizers (the official LocoProp code's settings)."""
import numpy as np
import pytest
import keras
from keras import ops

import lp_backend
import lp_model
from lp_optimizers import FIRST_ORDER, OPTIMIZERS, first_order, key, make_optimizer

WIDTHS = (6, 4, 2, 4, 6)
ACTS = lp_model.layer_activations(WIDTHS)
X = np.random.default_rng(0).uniform(0, 1, (8, 6)).astype(np.float32)
LRS = [0.0, 0.02, 0.01, 0.03]             # a changing learning rate (the schedule): catches lr-scaling slips


def ours(name):
    opt = first_order(name, ACTS)
    params = tuple(ops.convert_to_tensor(p) for p in lp_model.glorot_init(WIDTHS, 1))
    state = opt.init(params)
    step = lp_backend.compile_step(opt.step)
    for t, lr in enumerate(LRS):
        params, state, _ = step(params, state, ops.convert_to_tensor(X), lp_backend.scalar(lr), lp_backend.step_index(t))
    return [np.asarray(p) for p in params]


def grads_at(params):
    _, g = lp_model.loss_and_grads([ops.convert_to_tensor(p) for p in params], ACTS, ops.convert_to_tensor(X))
    return [np.asarray(a) for a in g]


@pytest.mark.parametrize("name,make", [
    ("SGD", lambda: keras.optimizers.SGD(learning_rate=0.0)),
    ("Momentum", lambda: keras.optimizers.SGD(learning_rate=0.0, momentum=0.9)),
    ("AdaGrad", lambda: keras.optimizers.Adagrad(learning_rate=0.0)),
    ("RMSProp", lambda: keras.optimizers.RMSprop(learning_rate=0.0)),
    ("Adam", lambda: keras.optimizers.Adam(learning_rate=0.0)),
])
def test_keras_default_settings_match_keras_optimizers(name, make):
    init = lp_model.glorot_init(WIDTHS, 1)
    variables = [keras.Variable(p) for p in init]
    opt = make()
    opt.build(variables)
    for lr in LRS:
        opt.learning_rate.assign(lr)
        opt.apply_gradients(zip([ops.convert_to_tensor(g) for g in grads_at([np.asarray(v) for v in variables])],
                                variables))
    for a, v in zip(ours(name), variables):
        np.testing.assert_allclose(a, np.asarray(v), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["Momentum (source)", "AdaGrad (source)", "RMSProp (source)", "Adam (source)"])
def test_source_settings_match_tf1_optimizers(name):
    tf = pytest.importorskip("tensorflow")
    v1 = tf.compat.v1.train
    make = {"Momentum (source)": lambda lr: v1.MomentumOptimizer(lr, momentum=0.999),
            "AdaGrad (source)": lambda lr: v1.AdagradOptimizer(lr, initial_accumulator_value=1e-5),
            "RMSProp (source)": lambda lr: v1.RMSPropOptimizer(lr, decay=0.9, momentum=0.999, epsilon=1e-5),
            "Adam (source)": lambda lr: v1.AdamOptimizer(lr, beta1=0.999, beta2=0.9, epsilon=1e-5)}[name]
    lr_var = tf.Variable(0.0)
    opt = make(lambda: lr_var.read_value())
    variables = [tf.Variable(p) for p in lp_model.glorot_init(WIDTHS, 1)]
    for lr in LRS:
        lr_var.assign(lr)
        opt.apply_gradients(zip([tf.constant(g) for g in grads_at([v.numpy() for v in variables])], variables))
    for a, v in zip(ours(name), variables):
        np.testing.assert_allclose(a, v.numpy(), rtol=2e-5, atol=1e-6)


def test_registry_names_keys_and_errors():
    assert len(OPTIMIZERS) == 13 and len(FIRST_ORDER) == 9
    assert key("RMSProp (source)") == "rmsprop_source" and key("K-FAC") == "kfac" and key("LocoProp-M") == "locoprop_m"
    assert make_optimizer("Adam", ACTS).state_bytes(lp_model.glorot_init(WIDTHS, 0)) == 2 * 4 * lp_model.n_params(WIDTHS)
    assert make_optimizer("SGD", ACTS).state_bytes(lp_model.glorot_init(WIDTHS, 0)) == 0
    with pytest.raises(ValueError):
        make_optimizer("Lion", ACTS)
    with pytest.raises(ValueError):
        make_optimizer("Adam", ACTS, beta1=0.5)
