import ft_weights as w


def test_gpt2_bpe_is_the_real_one():
    tok = w.gpt2_tokenizer()
    assert tok.encode("Hello world").ids == [15496, 995]
    assert tok.encode("The capital of France is Paris.").ids == [464, 3139, 286, 4881, 318, 6342, 13]
    text = "Tensor parallelism splits GEMMs, 42 times!"
    assert tok.decode(tok.encode(text).ids) == text
    assert tok.token_to_id("<|endoftext|>") == 50256


def test_merges_recovered_from_ranks():
    ranks = {bytes([b]): b for b in range(256)}
    ranks[b"ab"] = 256
    ranks[b"abc"] = 257
    ranks[b"abab"] = 258
    vocab, merges = w.vocab_and_merges(ranks)
    assert merges == [("a", "b"), ("ab", "c"), ("ab", "ab")]
    assert vocab["<|endoftext|>"] == w.ENDOFTEXT


def test_number_to_words():
    assert w.number_to_words(0) == "zero"
    assert w.number_to_words(342) == "three hundred forty two"
    assert w.number_to_words(910) == "nine hundred ten"
    assert w.number_to_words(12005) == "twelve thousand five"


def test_t5_split_is_disjoint():
    train, test = w.t5_split(held_out=50)
    assert len(test) == 50 and not set(train) & set(test) and len(train) + 50 == 1000


def test_sentencepiece_round_trip(tmp_path):
    tok = w.SPTokenizer(w.train_sentencepiece(tmp_path / "sp"))
    ids = tok.encode("number to words: 342")
    assert ids[-1] == tok.eos_id and tok.pad_id not in ids
    assert tok.decode(ids) == "number to words: 342"
    assert tok.decode(tok.encode("three hundred forty two") + [0, 0]) == "three hundred forty two"
