"""Data loading, ROT13 handling, seeded stratified splits and statistics (no text is ever printed)."""
import codecs

import numpy as np
import pandas as pd
import pytest

import bq_data as D


def test_parse_fortunes_splits_on_percent_lines():
    text = "one\nline two\n%\n\n%\nthree\n%\n"
    assert D.parse_fortunes(text) == ["one\nline two", "three"]


def test_rot13_detection_and_decoding(tmp_path):
    plain = ["la casa de la que no se habla y el perro", "il gatto che non dorme e il cane"] * 5
    (tmp_path / "enc").write_text("\n%\n".join(codecs.encode(t, "rot13") for t in plain))
    (tmp_path / "plain").write_text("\n%\n".join(plain))
    recs, was = D.read_fortune_file(tmp_path / "enc")
    assert was and recs == plain
    recs, was = D.read_fortune_file(tmp_path / "plain")
    assert not was and recs == plain


def test_load_fortunes_labels_from_folders(tmp_path):
    es, it, it_off = tmp_path / "es", tmp_path / "it", tmp_path / "itoff"
    (es / "off").mkdir(parents=True)
    it.mkdir()
    it_off.mkdir()
    (es / "a.fortunes").write_text("uno de la casa\n%\ndos y el perro\n%\n")
    (es / "a.fortunes.dat").write_bytes(b"\x00\x01")
    (es / "off" / "b.fortunes").write_text(codecs.encode("tres de la que\n%\ncuatro y la que\n%\n", "rot13"))
    (it / "c").write_text("il cane che dorme\n%\n")
    (it_off / "c-o").write_text("il gatto che non\n%\nil cane che dorme\n%\n")
    df = D.load_fortunes({"fortunes_es": es, "fortunes_it": it, "fortunes_it_off": it_off})
    counts = df.groupby(["lang", "label"]).size().to_dict()
    # the duplicated Italian text is kept once, as offensive
    assert counts == {("es", 0): 2, ("es", 1): 2, ("it", 1): 2}
    assert df[df.lang == "es"].rot13.sum() == 2


def _toy(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"text": [f"t{i} " + "x" * int(rng.integers(1, 50)) for i in range(n)],
                         "lang": rng.choice(["es", "it"], n), "label": (rng.random(n) < 0.1).astype(int)})


def test_splits_are_stratified_disjoint_and_seeded():
    df = _toy()
    s = D.make_splits(df, seed=3)
    sets = [set(part.text) for _, part in s.items()]
    assert sum(map(len, sets)) == len(df) and not (sets[0] & sets[1]) and not (sets[1] & sets[2])
    for (lang, label), g in df.groupby(["lang", "label"]):
        n_test = ((s.test.lang == lang) & (s.test.label == label)).sum()
        assert abs(n_test - 0.1 * len(g)) <= 1
    assert s.fingerprint() == D.make_splits(df, seed=3).fingerprint()
    assert s.fingerprint() != D.make_splits(df, seed=4).fingerprint()


def test_split_limits_keep_proportions():
    df = _toy(4000)
    s = D.make_splits(df, seed=0, limits={"train": 400, "test": 100})
    full = D.make_splits(df, seed=0)
    n_train, n_test, n_val = len(s.train), len(s.test), len(s.val)
    assert abs(n_train - 400) <= 4 and abs(n_test - 100) <= 4 and n_val == len(full.val)
    assert abs(s.train.label.mean() - full.train.label.mean()) < 0.02


def test_stats_and_histograms_count_bytes():
    df = _toy(200)
    s = D.make_splits(df, seed=0)
    st = D.split_stats(s)
    assert st["count"].sum() == 200 and set(st.columns) >= {"median_bytes", "p90_bytes"}
    h = D.byte_histogram(["aé", "a"])
    assert h.sum() == 4 and h[ord("a")] == 2 and h[0xC3] == 1
    assert D.byte_lengths(["aé"]).tolist() == [3]


def test_civil_comments_offline_error(monkeypatch):
    monkeypatch.setattr(D, "_network_available", lambda *a, **k: False)
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    with pytest.raises(D.OfflineError, match="fortunes"):
        D.load_dataset("civil_comments")
    with pytest.raises(ValueError):
        D.load_dataset("imdb")


def test_real_fortunes_counts():
    """The registered Debian sources: both languages, both labels, offensive share ~10%."""
    df = D.load_fortunes()
    counts = df.groupby(["lang", "label"]).size()
    assert set(counts.index) == {("es", 0), ("es", 1), ("it", 0), ("it", 1)}
    assert 19_000 < len(df) < 22_000
    assert 0.05 < df.label.mean() < 0.15
    # decoded Spanish offensive text reads like Spanish (common words appear), not ROT13
    off_es = df[(df.lang == "es") & (df.label == 1)].text
    assert D.rot13_score(off_es) < 1.0
