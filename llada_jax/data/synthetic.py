"""The built-in deterministic synthetic corpus: no downloads, and learning is checkable.

Documents come from a task of `llada_jax/tasks.py` (`data.synthetic_task`; the default: arithmetic facts such as
"317+45=362"), written in a character vocabulary, joined with EOS and packed into fixed-length sequences.
Sequence i depends only on (seed, i), so any step's batch can be rebuilt exactly, on any host.
"""
import numpy as np

from llada_jax import tasks

SPECIAL = ("<eos>", "<bos>", "<mask>", "<eot>", "<sh>", "<eh>")  # ids 0..5, matching the tiny config's tokens.*
CHARS = "0123456789+-*=;:,.?()<>| abcdefghijklmnopqrstuvwxyz\n"


class CharTokenizer:
    """Character tokenizer of the synthetic corpus; special roles take ids 0..5 (EOS doubles as pad)."""

    vocab_size = len(SPECIAL) + len(CHARS)

    def __init__(self):
        self.char_to_id = {ch: i + len(SPECIAL) for i, ch in enumerate(CHARS)}
        self.id_to_char = {i: ch for ch, i in self.char_to_id.items()}
        self.eos_id, self.bos_id, self.mask_id, self.eot_id = 0, 1, 2, 3

    def encode(self, text):
        try:
            return [self.char_to_id[ch] for ch in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the synthetic vocabulary {CHARS!r}.") from None

    def decode(self, ids, stop_at_eos=False):
        out = []
        for i in ids:
            i = int(i)
            if stop_at_eos and i == self.eos_id:
                break
            out.append(self.id_to_char.get(i, SPECIAL[i] if i < len(SPECIAL) else f"<{i}>"))
        return "".join(out)


TASKS = {name: task.document for name, task in tasks.TASKS.items()}  # name -> document(rng) -> text


class SyntheticCorpus:
    """Random-access fixed-length sequences of packed synthetic documents."""

    def __init__(self, seq_len, seed=0, task="arithmetic"):
        if task not in TASKS:
            raise ValueError(f"unknown data.synthetic_task={task!r}; expected one of {', '.join(TASKS)}.")
        self.seq_len, self.seed, self.make_doc = seq_len, seed, TASKS[task]
        self.tokenizer = CharTokenizer()

    def sequence(self, index):
        rng = np.random.default_rng([self.seed, index])
        out = []
        while len(out) < self.seq_len:
            out += self.tokenizer.encode(self.make_doc(rng)) + [self.tokenizer.eos_id]
        return np.asarray(out[: self.seq_len], np.int32)

    def batch(self, step, global_batch, process_index=0, process_count=1):
        """This host's rows of the global batch of `step`: {'tokens': [global_batch / process_count, seq_len]}."""
        local = global_batch // process_count
        first = step * global_batch + process_index * local
        return {"tokens": np.stack([self.sequence(first + i) for i in range(local)])}


class SyntheticSource:
    """The data-source contract of the trainer: an iterator of host-local numpy batches with a small, JSON-able
    position state (`get_state` / `set_state`) that checkpoints save and restore."""

    def __init__(self, corpus, global_batch, process_index=0, process_count=1):
        self.corpus, self.global_batch = corpus, global_batch
        self.process_index, self.process_count = process_index, process_count
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.corpus.batch(self.step, self.global_batch, self.process_index, self.process_count)
        self.step += 1
        return batch

    def get_state(self):
        return {"step": self.step}

    def set_state(self, state):
        self.step = int(state["step"])
