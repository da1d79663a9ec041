"""bq_full.run_stages: pieces named in --skip are left for another machine and counted as left, an unknown
name is refused before anything runs, and pieces already stored are not run again."""
import pytest

import bq_full
import bq_stages as ST


def _store_all_but(st, keep_missing):
    K = ST.knobs("smoke")
    names = list(ST.classifier_configs(K, "loop")) + ["pretrain", "ByteQRNN pre-trained", "seq2seq",
                                                       "matt_timing", "minilm"]
    for name in names:
        if name != keep_missing:
            st.json_path(name).write_text("{}")   # existence is what run_stages looks at
    return K


def test_skipped_piece_is_left_and_not_run(tmp_path):
    st = ST.Stages(tmp_path, log=lambda *_: None)
    K = _store_all_but(st, "minilm")
    assert bq_full.run_stages(K, st, budget_s=1e6, skip=("minilm",)) == 1
    assert not st.json_path("minilm").exists()


def test_unknown_skip_name_is_refused_naming_the_pieces(tmp_path):
    st = ST.Stages(tmp_path, log=lambda *_: None)
    K = _store_all_but(st, None)
    with pytest.raises(SystemExit, match=r"no such piece.*minilm"):
        bq_full.run_stages(K, st, budget_s=1e6, skip=("minlm",))
