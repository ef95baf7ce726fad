"""Built-in tasks: deterministic generators, what training sees vs what evaluation asks, exact-match scoring and
tasks.evaluate's batching against answers computed here."""
import re

import jax
import numpy as np
import pytest

from llada_jax import sampling, tasks
from llada_jax.data import synthetic


def docs(task, n, seed=0):
    rng = np.random.default_rng(seed)
    return [task.document(rng) for _ in range(n)]


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_generators_are_deterministic(name):
    task = tasks.get(name)
    assert docs(task, 50, seed=3) == docs(task, 50, seed=3)
    assert docs(task, 50, seed=3) != docs(task, 50, seed=4)
    assert task.eval_sets(20) == task.eval_sets(20)
    assert task.eval_sets(20, seed=1) != task.eval_sets(20, seed=2)
    # ... and so is the corpus built on them, sequence by sequence, and every character is in the vocabulary.
    a, b = synthetic.SyntheticCorpus(64, 0, name), synthetic.SyntheticCorpus(64, 0, name)
    np.testing.assert_array_equal(a.sequence(7), b.sequence(7))
    assert not np.array_equal(a.sequence(7), a.sequence(8))


def test_arithmetic_documents_are_correct_sums_and_unchanged():
    # The default corpus stream is the original one: operands from rng.integers(0, 1000, size=2).
    rng = np.random.default_rng([0, 0])
    a, b = rng.integers(0, 1000, size=2)
    tok = synthetic.CharTokenizer()
    first = tok.decode(synthetic.SyntheticCorpus(64, 0, "arithmetic").sequence(0), stop_at_eos=True)
    assert first == f"{a}+{b}={a + b}"
    for d in docs(tasks.get("arithmetic"), 200) + docs(tasks.get("arithmetic_small"), 200):
        x, y, z = map(int, re.fullmatch(r"(\d+)\+(\d+)=(\d+)", d).groups())
        assert x + y == z
    for ex in tasks.get("arithmetic").eval_sets(50)["arithmetic"]:
        x, y = map(int, re.fullmatch(r"(\d+)\+(\d+)=", ex.prompt).groups())
        assert ex.answer == str(x + y)


def test_arithmetic_small_evaluates_on_pairs_never_trained():
    task = tasks.get("arithmetic_small")
    assert 0.08 < task.held.mean() < 0.12  # about 10% of the 100 x 100 operand pairs
    trained = {tuple(map(int, re.match(r"(\d+)\+(\d+)", d).groups())) for d in docs(task, 20000)}
    asked = {tuple(map(int, re.match(r"(\d+)\+(\d+)", e.prompt).groups()))
             for e in task.eval_sets(500)["arithmetic_small"]}
    assert len(trained) > 8000 and len(asked) > 300
    assert not trained & asked
    assert all(max(p) <= 99 for p in trained | asked)


def test_reversal_trains_half_both_ways_and_asks_the_other_half():
    task = tasks.get("reversal")
    facts = task.facts
    assert len(facts) == 64 and len({w for f in facts for w in f}) == 128  # all A and B distinct
    both, forward_only = facts[:32], facts[32:]
    seen = set(docs(task, 5000))
    assert {f"{a}>{b}" for a, b in facts} <= seen  # every fact forward
    assert {f"{b}<{a}" for a, b in both} <= seen  # the first half also reversed
    assert not {f"{b}<{a}" for a, b in forward_only} & seen  # the second half never reversed
    sets = task.eval_sets(128)
    assert set(sets) == {"reversal_forward", "reversal_reverse"}
    fwd, rev = sets["reversal_forward"], sets["reversal_reverse"]
    assert len(fwd) == len(rev) == 32  # capped at the 32 forward-only facts, each asked once
    assert {(e.prompt[:-1], e.answer) for e in fwd} == set(forward_only)
    assert {(e.answer, e.prompt[:-1]) for e in rev} == set(forward_only)
    assert all(e.prompt.endswith(">") for e in fwd) and all(e.prompt.endswith("<") for e in rev)


@pytest.mark.parametrize("prediction, answer, right", [
    ("127", "127", True), (" 127 ", "127", True), ("abc", "abc", True),
    ("12", "127", False), ("1270", "127", False), ("", "127", False), ("127+1", "127", False), ("ABC", "abc", False),
])
def test_exact_match_on_hand_written_cases(prediction, answer, right):
    assert tasks.get("arithmetic").score(prediction, answer) is right
    assert tasks.get("reversal").score(prediction, answer) is right


def test_unknown_task_error_names_the_choices():
    with pytest.raises(tasks.TaskError, match=r"unknown task 'arithmatic'.*arithmetic, arithmetic_small, reversal"):
        tasks.task_names("reversal, arithmatic")
    assert tasks.task_names(" arithmetic ,reversal,") == ["arithmetic", "reversal"]
    with pytest.raises(ValueError, match="unknown data.synthetic_task=.nope.; expected one of arithmetic"):
        synthetic.SyntheticCorpus(16, 0, "nope")


@pytest.mark.parametrize("name,marks", [("arithmetic_small", "="), ("reversal", "<>")])
def test_sft_format_rows_are_one_prompt_and_answer_padded_with_eos(name, marks):
    """data.synthetic_format=sft: row i is document i of the same seed, split after its first mark, EOS-padded."""
    tok, task = synthetic.CharTokenizer(), tasks.get(name)
    corpus = synthetic.SyntheticCorpus(12, 5, name, "sft")
    batch = corpus.batch(step=1, global_batch=4)
    for i, (row, p_len) in enumerate(zip(batch["tokens"], batch["prompt_lengths"])):
        doc = task.document(np.random.default_rng([5, 4 + i]))
        cut = min(doc.index(m) for m in marks if m in doc) + 1
        assert tok.decode(row[:p_len]) == doc[:cut] and doc[cut - 1] in marks
        assert tok.decode(row[p_len:len(doc)]) == doc[cut:]
        assert (row[len(doc):] == tok.eos_id).all() and len(row) == 12
    with pytest.raises(ValueError, match="raise --config.train.seq_len"):
        synthetic.SyntheticCorpus(5, 0, name, "sft").sequence(0)
    with pytest.raises(ValueError, match="synthetic_format"):
        synthetic.SyntheticCorpus(12, 0, name, "zip")


def test_left_pad_with_a_key_mask():
    tok = synthetic.CharTokenizer()
    ids, mask = sampling.left_pad([tok.encode("1+2="), tok.encode("10+20=")], pad_id=0)
    assert ids.tolist() == [[0, 0] + tok.encode("1+2="), tok.encode("10+20=")]
    assert mask.tolist() == [[False, False] + [True] * 4, [True] * 6]


def test_evaluate_batches_and_scores_against_answers_computed_here(tiny_cfg, monkeypatch):
    """A fake sampler answers a+b correctly only when the sum is even (and garbage after an EOS); evaluate must
    report exactly the fraction of even sums, over batches whose last one is partial."""
    tok = synthetic.CharTokenizer()
    calls = []

    def fake_sample(model, params, prompt, prompt_mask, key, args, ids, objective, block_size=None):
        calls.append((np.asarray(prompt).shape, objective, args.gen_length))
        rows = []
        for p, m in zip(np.asarray(prompt), np.asarray(prompt_mask)):
            a, b = map(int, tok.decode(p[m])[:-1].split("+"))
            text = str(a + b) if (a + b) % 2 == 0 else str(a + b + 1)
            gen = tok.encode(text) + [ids.eos_id] + tok.encode("9" * 8)
            rows.append(np.concatenate([p, gen[: args.gen_length]]))
        return {"tokens": np.stack(rows)}

    monkeypatch.setattr(sampling, "sample", fake_sample)
    cfg = tiny_cfg
    cfg.eval.tasks, cfg.eval.n_examples, cfg.eval.batch = "arithmetic_small", 45, 16
    cfg.sampling.gen_length, cfg.sampling.block_length, cfg.sampling.steps = 8, 8, 8
    cfg.objective = "arm"
    out = tasks.evaluate(cfg, None, None, jax.random.key(0))
    examples = tasks.get("arithmetic_small").eval_sets(45)["arithmetic_small"]
    want = np.mean([int(e.answer) % 2 == 0 for e in examples])
    assert 0.2 < want < 0.8
    assert out == {"arithmetic_small/exact_match": pytest.approx(want)}
    assert len(calls) == 3 and len({c[0] for c in calls}) == 1  # 16 + 16 + 13 (padded to 16): one shape
    assert calls[0][1:] == ("arm", 8)


def test_tiny_task_config_picks_task_and_format():
    from llada_jax import config as config_lib
    add = config_lib.load_config("configs/tiny_task.py")
    assert (add.data.synthetic_task, add.data.synthetic_format, add.eval.tasks) == ("arithmetic_small", "sft",
                                                                                    "arithmetic_small")
    assert add.data.random_length_prob == 0.0 and add.train.seq_len >= 3 + 1 + 2 + 1 + 3 + 1  # "99+99=198" + EOS
    facts = config_lib.load_config("configs/tiny_task.py:reversal")
    assert (facts.data.synthetic_task, facts.data.synthetic_format) == ("reversal", "packed")
    assert config_lib.load_config("configs/tiny_task.py:arithmetic_small,packed").data.synthetic_format == "packed"
