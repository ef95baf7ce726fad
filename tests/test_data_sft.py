"""SFT data: the chat template's exact token layout, multi-turn splitting, EOS padding, over-long examples, and the
SFT source in the trainer."""
import json

import numpy as np
import pytest
from data_corpus import train_tokenizer

from llada_jax.config import default_config
from llada_jax.data import sft, tokenizer

DIALOGUE = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "  the fox? "},
    {"role": "assistant", "content": "a lazy dog\n"},
    {"role": "user", "content": "and then"},
    {"role": "assistant", "content": "jumps"},
]}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(str(tmp_path_factory.mktemp("tok")))[0]


def _header(tok, role):
    return [tok.start_header_id] + tok.encode(role) + [tok.end_header_id] + tok.encode("\n\n")


def test_multi_turn_dialogue_becomes_one_example_per_answer(tok):
    pairs = sft.render(sft.parse_dialogue(DIALOGUE), tok)
    assert len(pairs) == 2
    e = tok.encode
    system = _header(tok, "system") + e("Be brief.") + [3]
    user1 = _header(tok, "user") + e("the fox?") + [3]
    answer1 = e("a lazy dog") + [3]
    user2 = _header(tok, "user") + e("and then") + [3]
    assert pairs[0] == ([1] + system + user1 + _header(tok, "assistant"), answer1)
    assert pairs[1] == ([1] + system + user1 + _header(tok, "assistant") + answer1 + user2
                        + _header(tok, "assistant"), e("jumps") + [3])
    assert tok.decode(pairs[1][0] + pairs[1][1], keep_special=True) == (
        "<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nthe fox?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\na lazy dog<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nand then<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\njumps<|eot_id|>")


def test_batch_layout_prompt_lengths_and_eos_padding(tok):
    pairs = sft.render(sft.parse_dialogue(DIALOGUE), tok)
    ex = sft.Examples(pairs, seq_len=128)
    assert len(ex) == 2 and ex.dropped == 0
    batch = sft.ReadExamples(ex, tok.pad_id)(np.array([1, 0]))
    assert batch["tokens"].dtype == np.int32 and batch["tokens"].shape == (2, 128)
    for row, (prompt, answer) in zip(batch["tokens"], [pairs[1], pairs[0]]):
        n = len(prompt) + len(answer)
        assert row[:n].tolist() == prompt + answer
        assert (row[n:] == tok.eos_id).all() and row[n - 1] == tok.eot_id
    assert batch["prompt_lengths"].tolist() == [len(pairs[1][0]), len(pairs[0][0])]
    assert batch["prompt_lengths"].dtype == np.int32


def test_prompt_response_format_equals_a_single_turn_dialogue(tok):
    a = sft.render(sft.parse_dialogue({"prompt": "hi", "response": "fox"}), tok)
    b = sft.render(sft.parse_dialogue({"messages": [{"role": "user", "content": "hi"},
                                                    {"role": "assistant", "content": "fox"}]}), tok)
    assert a == b and len(a) == 1


def test_overlong_examples_are_dropped_or_truncated_and_counted(tok):
    pairs = sft.render(sft.parse_dialogue(DIALOGUE), tok)
    p0, p1 = len(pairs[0][0]), len(pairs[1][0])
    seq_len = p0 + 2  # the first example loses its answer's tail; the second's prompt alone is too long
    assert p0 + len(pairs[0][1]) > seq_len and p1 >= seq_len
    dropped = sft.Examples(pairs, seq_len, "drop")
    assert len(dropped) == 0 and dropped.dropped == 2
    cut = sft.Examples(pairs, seq_len, "truncate")
    assert len(cut) == 1 and cut.truncated == 1 and cut.dropped == 1
    assert cut.tokens.tolist() == pairs[0][0] + pairs[0][1][:2] and cut.prompt_lengths.tolist() == [p0]


def test_malformed_lines_name_file_and_line(tmp_path, tok):
    f = tmp_path / "chat.jsonl"
    f.write_text(json.dumps(DIALOGUE) + "\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(sft.SFTError, match=r"chat.jsonl:2: the dialogue has no assistant message"):
        sft.load([str(f)], tok, 64)
    f.write_text(json.dumps(DIALOGUE) + "\n{oops\n")
    with pytest.raises(sft.SFTError, match=r"chat.jsonl:2: not a valid UTF-8 JSON line"):
        sft.load([str(f)], tok, 64)
    f.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(sft.SFTError, match=r"chat.jsonl:1: expected \{\"messages\""):
        sft.load([str(f)], tok, 64)


def _sft_cfg(tok, path):
    cfg = default_config()
    tokenizer.apply_to_config(tok, cfg)
    cfg.data.source, cfg.data.path, cfg.data.tokenizer = "sft", str(path), tok.path
    cfg.data.threads, cfg.data.random_length_prob = 0, 0.0
    cfg.train.seq_len, cfg.train.global_batch = 128, 8
    return cfg


def _write_chat(path, n=7):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"the fox {i}", "response": "dog " * (i + 1)}) + "\n")
        f.write(json.dumps(DIALOGUE) + "\n")


def test_sft_source_shuffles_examples_and_restores_exactly(tmp_path, tok):
    _write_chat(tmp_path / "chat.jsonl")
    cfg = _sft_cfg(tok, tmp_path / "chat.jsonl")
    src = sft.make_sft_source(cfg, 0, 1, log=lambda *_: None)
    assert len(src.examples) == 9
    first = next(src)
    # one epoch of 9 examples within the first 9 rows: every example exactly once
    rows = np.concatenate([first["tokens"], next(src)["tokens"][:1]])
    ex = src.examples
    keys = sorted(tuple(ex.tokens[ex.offsets[i]:ex.offsets[i + 1]]) for i in range(9))
    got = sorted(tuple(r[:np.nonzero(r != tok.eos_id)[0][-1] + 1]) for r in rows)
    assert got == keys
    state = src.get_state()
    want = [next(src) for _ in range(2)]
    again = sft.make_sft_source(cfg, 0, 1, log=lambda *_: None)
    again.set_state(state)
    for a, b in zip(want, [next(again) for _ in range(2)]):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
        np.testing.assert_array_equal(a["prompt_lengths"], b["prompt_lengths"])


@pytest.mark.slow
def test_train_end_to_end_on_sft_data(tmp_path, tok, monkeypatch):
    from llada_jax import train
    _write_chat(tmp_path / "chat.jsonl")
    cfg = _sft_cfg(tok, tmp_path / "chat.jsonl")
    m = cfg.model
    m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim = 400, 32, 1, 2, 1, 64
    cfg.train.steps, cfg.train.log_every = 2, 1
    seen = []
    make = train.make_data

    def recording(c):
        src = make(c)
        real = src.read
        src.read = lambda idx: seen.append(real(idx)) or seen[-1]
        return src

    monkeypatch.setattr(train, "make_data", recording)
    _, history = train.train(cfg, str(tmp_path / "run"), log=lambda *_: None)
    direct = sft.make_sft_source(cfg, 0, 1, log=lambda *_: None)
    np.testing.assert_array_equal(seen[0]["tokens"], direct.dataset()[0]["tokens"])
    np.testing.assert_array_equal(seen[0]["prompt_lengths"], direct.dataset()[0]["prompt_lengths"])
    assert [h["step"] for h in history] == [1, 2] and all(np.isfinite(h["loss"]) for h in history)
