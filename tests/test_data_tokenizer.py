"""Sentencepiece tokenizer: training, ids by role, round trips, and clear errors."""
import os

import numpy as np
import pytest
from data_corpus import train_tokenizer

from llada_jax.config import default_config
from llada_jax.data import tokenizer as tokenizer_lib


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tokenizer(str(tmp_path_factory.mktemp("tok")))


def test_special_ids_match_the_default_config_and_are_distinct(trained):
    tok, _ = trained
    ids = tok.special_ids()
    assert ids == {"eos_id": 0, "bos_id": 1, "mask_id": 2, "eot_id": 3, "start_header_id": 4,
                   "end_header_id": 5, "pad_id": 0}
    roles = [r for r in ids if r != "pad_id"]
    assert len({ids[r] for r in roles}) == len(roles)
    for role, piece in tokenizer_lib.PIECES.items():
        assert tok.sp.id_to_piece(ids[role]) == piece and tok.sp.is_control(ids[role])
    assert tok.vocab_size == 400
    cfg = default_config()
    tokenizer_lib.check_config(ids, 64, cfg, "t")  # the default tokens.* agree by construction
    tokenizer_lib.apply_to_config(tok, cfg)
    assert cfg.model.vocab_size == 400 and cfg.tokens.mask_id == 2 and cfg.tokens.pad_id == 0


def test_round_trip_of_unseen_text(trained):
    tok, docs = trained
    texts = ["the fox jumps\n\nover  two spaces", "Zürich ∑ 😀 <|endoftext|> <|mdm_mask|>", "",
             docs[next(iter(docs))][0]]
    ids = tok.encode(texts)
    assert ids[0] == tok.encode(texts[0])  # batched == single
    assert tok.decode(ids) == texts
    assert all(i > 6 for i in ids[1])  # text spelling a special piece never becomes that special id
    assert tok.decode(np.array([ids[0][:3], ids[0][3:6]])) == [tok.decode(ids[0][:3]), tok.decode(ids[0][3:6])]
    # a learned merge: common words take fewer pieces than characters
    assert len(tok.encode("the quick brown fox")) < len("the quick brown fox")


def test_decode_keep_special(trained):
    tok, _ = trained
    ids = [tok.bos_id] + tok.encode("hi") + [tok.eot_id, tok.eos_id]
    assert tok.decode(ids) == "hi"
    assert tok.decode(ids, keep_special=True) == "<|startoftext|>hi<|eot_id|><|endoftext|>"


def test_model_without_mask_piece_is_a_clear_error(tmp_path, trained):
    import sentencepiece as spm
    _, docs = trained
    plain = [p for p in docs if p.endswith("a.txt")]
    spm.SentencePieceTrainer.train(input=plain, model_prefix=str(tmp_path / "plain"), vocab_size=50, model_type="bpe",
                                   minloglevel=2)
    with pytest.raises(tokenizer_lib.TokenizerError,
                       match=r"no piece for mask \(<\|mdm_mask\|>\).*llada data tokenizer"):
        tokenizer_lib.Tokenizer.load(str(tmp_path / "plain.model"))
    with pytest.raises(tokenizer_lib.TokenizerError, match="does not exist"):
        tokenizer_lib.Tokenizer.load(str(tmp_path / "missing.model"))


def test_config_mismatch_names_the_fix(trained):
    tok, _ = trained
    cfg = default_config()
    cfg.tokens.mask_id = 7
    with pytest.raises(tokenizer_lib.TokenizerError, match=r"tokens.mask_id=7 but .* has 2.*--config.tokens.mask_id=2"):
        tokenizer_lib.check_config(tok.special_ids(), tok.vocab_size, cfg, "the tokenizer")


def test_cli_trains_a_tokenizer(tmp_path, trained):
    from llada_jax import cli
    _, docs = trained
    out = tmp_path / "cli" / "m"
    cli.main(["data", "tokenizer", f"--input={','.join(docs)}", f"--out={out}", "--vocab_size=300",
              "--model_type=unigram"])
    tok = tokenizer_lib.Tokenizer.load(f"{out}.model")
    assert tok.vocab_size == 300 and tok.mask_id == 2 and os.path.exists(f"{out}.vocab")
