"""Built-in tasks: deterministic generators, what training sees vs what evaluation asks (exact-match scoring and its
batching are tested in test_evaluate.py)."""
import re

import numpy as np
import pytest

from llada_jax.data import synthetic, tasks


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


def test_unknown_task_error_names_the_choices():
    with pytest.raises(tasks.TaskError, match=r"unknown task 'arithmatic'.*arithmetic, arithmetic_small, reversal"):
        tasks.task_names("reversal, arithmatic")
    assert tasks.task_names(" arithmetic ,reversal,") == ["arithmetic", "reversal"]
    with pytest.raises(ValueError, match="unknown data.synthetic_task=.nope.; expected one of arithmetic"):
        synthetic.SyntheticCorpus(16, 0, "nope")


def test_countdown_documents_are_solved_and_its_evaluation_problems_never_trained():
    task = tasks.get("countdown")
    trained = set()
    for doc in docs(task, 3000):
        m = re.fullmatch(r"(\d),(\d),(\d):(\d+)=([0-9+*()-]+)", doc)
        numbers, target, expr = sorted(map(int, m.group(1, 2, 3))), int(m.group(4)), m.group(5)
        assert eval(expr) == target and 0 <= target <= 99  # our own generated text: eval is the reference here
        assert sorted(int(d) for d in re.findall(r"\d+", expr)) == numbers
        trained.add((tuple(numbers), target))
    examples = task.eval_sets(200)["countdown"]
    assert len(examples) == 200
    for ex in examples:
        numbers, target = task.parse(ex.prompt)
        assert (tuple(sorted(numbers)), target) not in trained
        assert task.reward(ex, ex.answer) == 1.0 and task.reward(ex, ex.answer + "+0") == 0.0
    held = np.mean([task.held(*task.problem(np.random.default_rng(i))[:2]) for i in range(4000)])
    assert abs(held - 0.1) < 0.02  # the held-out fraction of problems


@pytest.mark.parametrize("answer, right", [
    ("3*5+7", True), ("7+5*3", True), ("(7+5)*3", False), ("5*3+7 ", True), ("3*(5)+7", True),
    ("3*5*7", False), ("3*5+7+0", False), ("3*5+7-7+7", False), ("15+7", False), ("3*7+5-4", False),
    ("-3+5*7", False), ("3*5+7.0", False), ("x+3*5+7", False), ("3*5+", False), ("", False), ("3 * 5 + 7", True),
    ("(" * 40 + "3*5+7" + ")" * 40, False), ("3//5+7", False),
])
def test_countdown_reward_on_hand_written_answers(answer, right):
    """Numbers 3, 5, 7 and target 22: each number exactly once, only +, - and *, value 22."""
    from llada_jax.data import rewards
    assert rewards.countdown(answer, [7, 3, 5], 22) is right


@pytest.mark.parametrize("name,marks,width", [("arithmetic_small", "=", 12), ("reversal", "<>", 12),
                                              ("countdown", "=", 24)])
def test_sft_format_rows_are_one_prompt_and_answer_padded_with_eos(name, marks, width):
    """data.synthetic_format=sft: row i is document i of the same seed, split after its first mark, EOS-padded."""
    tok, task = synthetic.CharTokenizer(), tasks.get(name)
    corpus = synthetic.SyntheticCorpus(width, 5, name, "sft")
    batch = corpus.batch(step=1, global_batch=4)
    for i, (row, p_len) in enumerate(zip(batch["tokens"], batch["prompt_lengths"])):
        doc = task.document(np.random.default_rng([5, 4 + i]))
        cut = min(doc.index(m) for m in marks if m in doc) + 1
        assert tok.decode(row[:p_len]) == doc[:cut] and doc[cut - 1] in marks
        assert tok.decode(row[p_len:len(doc)]) == doc[cut:]
        assert (row[len(doc):] == tok.eos_id).all() and len(row) == width
    with pytest.raises(ValueError, match="raise --config.train.seq_len"):
        synthetic.SyntheticCorpus(5, 0, name, "sft").sequence(0)
    with pytest.raises(ValueError, match="synthetic_format"):
        synthetic.SyntheticCorpus(12, 0, name, "zip")


def test_tiny_task_config_picks_task_and_format():
    from llada_jax import config as config_lib
    add = config_lib.load_config("configs/tiny_task.py")
    assert (add.data.synthetic_task, add.data.synthetic_format, add.eval.tasks) == ("arithmetic_small", "sft",
                                                                                    "arithmetic_small")
    assert add.data.random_length_prob == 0.0 and add.train.seq_len >= 3 + 1 + 2 + 1 + 3 + 1  # "99+99=198" + EOS
    facts = config_lib.load_config("configs/tiny_task.py:reversal")
    assert (facts.data.synthetic_task, facts.data.synthetic_format) == ("reversal", "packed")
    assert config_lib.load_config("configs/tiny_task.py:arithmetic_small,packed").data.synthetic_format == "packed"
