"""bq_s2s_probe.py's sweep: its arguments, the command line of each recipe, loss windows and record writing (no
training here: the probe itself trains the full-size model; seconds in all)."""
import json

import numpy as np
import pytest

import bq_s2s_probe as P


def test_sweep_names_recipes_and_rejects_unknown_ones(capsys):
    assert P.parse(["--sweep", "all"]).sweep == list(P.RECIPES)
    assert P.parse(["--sweep", "f_w200_lr1e-3, a_w200_lr2e-3"]).sweep == ["f_w200_lr1e-3", "a_w200_lr2e-3"]
    with pytest.raises(SystemExit):
        P.parse(["--sweep", "a_w200_lr2e-3,z_nothing"])
    assert "z_nothing" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    ([], "exactly one of"),
    (["--label", "x", "--sweep", "all"], "exactly one of"),
    (["--from-stage", "s.json"], "exactly one of"),
    (["--label", "x", "--stop-after", "0"], "--stop-after"),
    (["--label", "x", "--n-val", "8", "--n-beam", "16"], "--n-val"),
    (["--label", "x", "--lr", "0"], "--lr"),
    (["--label", "x", "--precision", "fast"], "--precision"),
    (["--label", "x", "--mem-norm", "2"], "--mem-norm"),
    (["--sweep", "all", "--parallel", "-1"], "--parallel"),
])
def test_bad_arguments_are_named(argv, says, capsys):
    with pytest.raises(SystemExit):
        P.parse(argv)
    assert says in capsys.readouterr().err


def test_each_recipe_runs_as_its_own_process_with_its_settings(tmp_path):
    args = P.parse(["--sweep", "all", "--out", str(tmp_path / "o.json"), "--window", "100"])
    argv = {n: P.sweep_argv(args, n, tmp_path / f"{n}.json") for n in args.sweep}
    opt = lambda a, k: a[a.index(k) + 1] if k in a else None
    for name, a in argv.items():
        child = P.parse(a[2:])            # the child's own parser accepts it: one recipe, its label, its part file
        r = P.RECIPES[name]
        assert child.label == f"sweep_{name}" and child.sweep is None and child.out == tmp_path / f"{name}.json"
        assert (child.warmup, child.lr, child.precision) == (r["warmup"], r["lr"], r.get("precision"))
        assert child.order_seed == r.get("order_seed", 0) and child.window == 100 and child.stop_after is None
        assert child.mem_norm == r.get("mem_norm")
    assert opt(argv["d_w200_lr2e-3_highest"], "--precision") == "highest"
    assert opt(argv["b_w200_lr2e-3_nonorm"], "--mem-norm") == "0"
    assert opt(argv["e_w200_lr2e-3_order1"], "--order-seed") == "1"


def test_windows_recover_per_step_losses_from_keras_running_mean():
    steps = np.array([4.0, 2.0, 3.0, 1.0, 5.0])
    running = np.cumsum(steps) / np.arange(1, 6)
    assert P.windows(running, 2) == {"1-2": 3.0, "3-4": 2.0, "5-5": 5.0}


def test_records_are_appended_replacing_the_same_label(tmp_path):
    out = tmp_path / "new" / "probe.json"
    P.append_records(out, [{"label": "a", "v": 1}, {"label": "b", "v": 2}], {"frac": 0.5})
    data = P.append_records(out, [{"label": "a", "v": 3}])
    assert json.loads(out.read_text()) == data and data["about"] == P.ABOUT and data["frac"] == 0.5
    assert [(r["label"], r["v"]) for r in data["runs"]] == [("b", 2), ("a", 3)]


def test_a_stage_json_becomes_a_labelled_record(tmp_path):
    losses = np.cumsum([3.0, 1.0, 2.0, 2.0]) / np.arange(1, 5)
    cfg = dict(src_len=72, tgt_len=64, dim=128, dec_layers=3, quantize=True, encoder=dict(layers=2))
    stage = {"settings": dict(cfg=cfg, steps=4000, batch=64, lr=2e-3, warmup=200, seed=0, beam_inputs=500,
                              n_pairs=100),
             "metrics": dict(losses=list(losses), byte_acc_float_beam=0.1, byte_acc_uint8_beam=0.1,
                             byte_acc_copy_input=0.5, beam_top1_agreement_uint8=0.25),
             "machine": "NVIDIA H200"}
    (tmp_path / "seq2seq.json").write_text(json.dumps(stage))
    P.main(["--from-stage", str(tmp_path / "seq2seq.json"), "--label", "st", "--window", "2", "--note", "n",
            "--out", str(tmp_path / "o.json")])
    (rec,) = json.loads((tmp_path / "o.json").read_text())["runs"]
    assert rec["train_loss_per_step_mean"] == {"1-2": 2.0, "3-4": 2.0} and rec["machine"] == "NVIDIA H200, n"
    assert rec["source"] == "stage" and rec["byte_acc_copy_input_on_beam_test"] == 0.5
    assert "beam-test byte acc float 0.1" in P.summary(rec)
    with pytest.raises(SystemExit, match="no file"):
        P.main(["--from-stage", str(tmp_path / "missing.json"), "--label", "st", "--out", str(tmp_path / "o.json")])


def test_a_sweep_stopped_at_its_deadline_writes_no_record(tmp_path, capsys):
    """A recipe still running at --deadline-s is stopped and reported, and --out is left as it was."""
    P.main(["--sweep", "a_w200_lr2e-3", "--deadline-s", "0.5", "--out", str(tmp_path / "o.json")])
    out = capsys.readouterr().out
    assert "sweep_a_w200_lr2e-3: no record (stopped at the deadline" in out and "0 of 1 recipes" in out
    assert not (tmp_path / "o.json").exists() and (tmp_path / "o.parts" / "a_w200_lr2e-3.log").exists()


def test_precision_is_refused_off_jax():
    import keras
    if keras.backend.backend() == "jax":
        pytest.skip("under JAX --precision is accepted (and the probe trains the full-size model)")
    with pytest.raises(SystemExit, match="JAX's matmul precision"):
        P.probe(P.parse(["--label", "x", "--precision", "highest"]))
