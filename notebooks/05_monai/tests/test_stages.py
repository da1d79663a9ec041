"""The stage machinery (mo_stages.Stage, mo_full.py) at CPU size: pieces kept, re-used, budgeted."""
import json

import pytest

import mo_stages


def test_stage_keeps_reuses_and_budgets_pieces(tmp_path):
    calls = []

    def piece(work):
        calls.append(1)
        (work / "weights.bin").write_bytes(b"x" * 10)
        return {"value": len(calls)}

    st = mo_stages.Stage(tmp_path, budget_s=100.0, log=lambda m: None)
    assert st.piece("a", piece, expect_s=1)["value"] == 1
    assert (tmp_path / "a.json").exists() and (tmp_path / "a" / "weights.bin").read_bytes() == b"x" * 10
    assert st.piece("a", piece, expect_s=1)["value"] == 1 and len(calls) == 1     # loaded, not recomputed
    with pytest.raises(mo_stages.NotStarted, match="expected 200 s"):
        st.piece("b", piece, expect_s=200)
    assert not (tmp_path / "b.json").exists() and len(calls) == 1
    fresh = mo_stages.Stage(tmp_path, log=lambda m: None, reuse=False)             # smoke: always computed
    assert fresh.piece("a", piece)["value"] == 2 and not fresh.done("a")
    assert json.loads((tmp_path / "a.json").read_text())["value"] == 2

    def broken(work):
        (work / "half.bin").write_bytes(b"")
        raise RuntimeError("out of memory")
    with pytest.raises(RuntimeError):
        st.piece("c", broken)
    assert not st.done("c") and not (tmp_path / "c").exists()     # a failed piece leaves no finished piece


def test_params_and_expected_gpu_seconds():
    with pytest.raises(ValueError, match="profile="):
        mo_stages.params("huge")
    K = mo_stages.params("full")
    assert mo_stages.expected_seconds("main", mo_stages.params("tiny"), "cpu") == 0.0
    per = {n: mo_stages.expected_seconds(n, K, "cuda") for n in mo_stages.PIECES_1GPU + mo_stages.PIECES_2GPU}
    # the races are capped by their time budgets, so no piece can outgrow one 480 s command
    assert per["race_regular"] <= 40 + K["race_budget_s"]["regular"] + 6.43 + 2 + 1e-9
    assert all(0 < v < 480 for v in per.values()), per


def test_mo_full_tiny_runs_pieces_then_resumes(tmp_path, monkeypatch, capsys):
    """One piece (the others: the same Stage.piece; torchrun in test_train; all of them end to end by hand,
    `mo_full.py --profile tiny`): computed, kept, then loaded by a second command."""
    import mo_full
    monkeypatch.setenv("LABKIT_STAGE_DIR", str(tmp_path / "stages"))
    args = ["--profile", "tiny", "--budget-s", "600", "--data-cache", str(tmp_path / "data"),
            "--pieces", "race_fast"]
    assert mo_full.main(args) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("STAGES COMPLETE") and "computed 1 pieces" in out, out
    folder = tmp_path / "stages" / "05_monai.tiny"
    assert sorted(p.name for p in folder.glob("*.json")) == ["meta.json", "race_fast.json"]
    race = json.loads((folder / "race_fast.json").read_text())
    assert race["stopped_by"] == "target" and race["time_to_target_s"] >= race["setup_s"]  # tiny target 0.0
    assert race["machine"]["gpu_count"] == 0 and race["config"]["synth"]
    assert mo_full.main(args) == 0                                   # a second command: nothing left to do
    assert capsys.readouterr().out.rstrip().splitlines()[-1:] == ["STAGES COMPLETE"]
    assert mo_full.main(args[:-2] + ["--ddp"]) == 2                  # no 2 GPUs here: refused, said so
    assert "needs 2 GPUs" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="other settings"):         # pieces of one seed only
        mo_full.main(args + ["--seed", "1"])
    with pytest.raises(SystemExit):
        mo_full.main(args[:-1] + ["no_such_piece"])
