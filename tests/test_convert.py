"""Conversion to and from the LLaDA Hugging Face layout (convert/) and the PyTorch model
(convert/torch_model.py)."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from llada_jax import checkpoint, cli, config as config_lib, model as model_lib, rundir, train
from llada_jax.convert import hf, safetensors_io

torch = pytest.importorskip("torch")  # CI installs CPU torch; only transformers is optional below
from llada_jax.convert import torch_model  # noqa: E402


def _cfg(tiny_cfg, kv_heads=2, vocab=None, ffn=None):
    c = tiny_cfg
    c.model.n_kv_heads = kv_heads
    if vocab:
        c.model.vocab_size = vocab
    if ffn:
        c.model.ffn_dim = ffn
    c.checkpoint.async_save = False
    return c


def _random_params(cfg, seed=0):
    """Every leaf random (norms too), so that a swapped or transposed tensor cannot go unnoticed."""
    shapes = model_lib.Model(cfg.model).abstract_params()
    leaves, tree = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, s.shape, s.dtype) * 0.3 for k, s in zip(keys, leaves)])


def _save_run(run_dir, cfg, params, devices=None, step=7):
    """A run directory as `llada train` leaves it: config.json + an orbax checkpoint, saved from the whole train
    state on the mesh of `devices` (train.Setup), or, when devices is None, from params and step only (faster)."""
    if devices is None:
        state = {"params": params, "step": np.int32(step)}
    else:
        setup = train.Setup(cfg, devices)
        state = setup.init_state()
        state["params"] = jax.device_put(params, setup.param_sharding)
    ckpt = checkpoint.Checkpointer(os.path.join(run_dir, "checkpoints"), cfg)
    ckpt.save(step, state, {"position": 0}, cfg, force=True)
    ckpt.wait()
    ckpt.close()
    rundir.save_config(run_dir, cfg)
    return run_dir


def _tokens(cfg, b=2, t=12, seed=1):
    return np.random.default_rng(seed).integers(0, cfg.model.vocab_size, (b, t))


def _jax_logits(cfg, params, tokens, key_mask=None, dtype="float32"):
    m = cfg.model.copy_and_resolve_references()
    m.dtype = dtype
    p = jax.tree.map(lambda x: x.astype(dtype), params)
    mask = None if key_mask is None else jnp.asarray(key_mask)
    return np.asarray(model_lib.Model(m).apply(p, jnp.asarray(tokens), mask))


def _hf_tensors(hf_dir):
    """{name: (dtype code, shape, raw bytes)} of an exported directory."""
    out = {}
    for name, (path, code, shape, offset, nbytes) in hf.read_hf_index(hf_dir).items():
        with open(path, "rb") as f:
            f.seek(offset)
            out[name] = (code, shape, f.read(nbytes))
    return out


def _hf_array(hf_dir, name):
    code, shape, raw = _hf_tensors(hf_dir)[name]
    return np.frombuffer(raw, hf.ST_DTYPES[code]).reshape(shape)


def _close(a, b, rtol):
    """Relative to the logits' scale (near-zero logits have no meaningful relative error)."""
    err = np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))) / np.max(np.abs(b))
    assert err < rtol, f"max error {err:.2e} of the logits' scale, tolerance {rtol:.0e}"


_tiny = tiny_config  # conftest's tiny model, for module-scoped fixtures


# Token ids by role unlike the defaults' (0..5), so that an export that dropped one could not pass unnoticed.
RUN_TOKENS = {"mask_id": 40, "eos_id": 41, "pad_id": 42, "bos_id": 43, "eot_id": 44, "start_header_id": 45,
              "end_header_id": 46}


@pytest.fixture(scope="module", params=[4, 2], ids=["mha", "gqa"])
def run(request, tmp_path_factory):
    """A saved run (read-only for the tests), MHA and GQA."""
    cfg = _cfg(_tiny(), kv_heads=request.param)
    cfg.tokens.update(RUN_TOKENS)
    params = _random_params(cfg)
    return _save_run(str(tmp_path_factory.mktemp("run")), cfg, params), cfg, params


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(HF directory, run directory, config, params) of the tiny GQA model exported in float32; read-only."""
    cfg = _cfg(_tiny())
    params = _random_params(cfg)
    run_dir = _save_run(str(tmp_path_factory.mktemp("run")), cfg, params)
    out = str(tmp_path_factory.mktemp("hf"))
    hf.to_hf(run_dir, out, dtype="float32", log=lambda *a: None)
    return out, run_dir, cfg, params


@pytest.mark.slow
def test_export_layout_and_float32_logits(run, tmp_path):
    run_dir, cfg, params = run
    out = str(tmp_path / "hf")
    hf.to_hf(run_dir, out, dtype="float32", max_shard_size="20KB", log=lambda *a: None)
    with open(os.path.join(out, "config.json")) as f:
        c = json.load(f)
    assert c["model_type"] == "llada" and c["architectures"] == ["LLaDAModelLM"]
    assert (c["d_model"], c["n_layers"], c["n_heads"], c["n_kv_heads"], c["mlp_hidden_size"], c["vocab_size"]) == (
        32, 2, 4, cfg.model.n_kv_heads, 64, 48)
    assert c["mask_token_id"] == cfg.tokens.mask_id and c["auto_map"]["AutoModel"] == "modeling_llada.LLaDAModelLM"
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    assert len(index["weight_map"]) == 3 + 9 * cfg.model.n_layers and len(set(index["weight_map"].values())) > 1
    for n in ("configuration_llada.py", "modeling_llada.py", "torch_model.py", "generation_config.json"):
        assert os.path.exists(os.path.join(out, n))
    # The official names hold our tensors in PyTorch's [out, in] layout.
    m = cfg.model
    q = _hf_array(out, "model.transformer.blocks.1.q_proj.weight")
    np.testing.assert_array_equal(q, np.asarray(params["blocks"]["q_proj"][1]).reshape(m.d_model, -1).T)
    np.testing.assert_array_equal(_hf_array(out, "model.transformer.ff_out.weight"), np.asarray(params["lm_head"]).T)

    # The safetensors library reads our files; our PyTorch model reproduces the JAX logits.
    from safetensors import safe_open
    with safe_open(os.path.join(out, index["weight_map"]["model.transformer.wte.weight"]), "pt") as f:
        np.testing.assert_array_equal(f.get_tensor("model.transformer.wte.weight").numpy(), params["wte"])
    tm = torch_model.load(out)
    tokens = _tokens(cfg)
    key_mask = np.ones(tokens.shape, bool)
    key_mask[1, -4:] = False  # a padded row
    with torch.no_grad():
        for mask in (None, key_mask):
            got = tm(torch.from_numpy(tokens), None if mask is None else torch.from_numpy(mask)).numpy()
            _close(got, _jax_logits(cfg, params, tokens, mask), 1e-5)


@pytest.mark.slow
def test_export_bfloat16_logits(run, tmp_path):
    run_dir, cfg, params = run
    out = str(tmp_path / "hf")
    hf.to_hf(run_dir, out, dtype="bfloat16", log=lambda *a: None)
    assert {v[0] for v in _hf_tensors(out).values()} == {"BF16"}
    tm = torch_model.load(out, dtype=torch.bfloat16)
    tokens = _tokens(cfg)
    with torch.no_grad():
        got = tm(torch.from_numpy(tokens)).numpy()
    _close(got, _jax_logits(cfg, params, tokens, dtype="bfloat16"), 3e-2)  # bf16 has 8 mantissa bits
    _close(got, _jax_logits(cfg, params, tokens), 6e-2)


@pytest.mark.slow
def test_transformers_auto_classes(run, tmp_path):
    transformers = pytest.importorskip("transformers")
    run_dir, cfg, params = run
    out = str(tmp_path / "hf")
    hf.to_hf(run_dir, out, dtype="float32", log=lambda *a: None)
    tokens = _tokens(cfg)
    want = _jax_logits(cfg, params, tokens)
    for auto in (transformers.AutoModel, transformers.AutoModelForCausalLM):
        model = auto.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
        with torch.no_grad():
            got = model(input_ids=torch.from_numpy(tokens)).logits.numpy()
        _close(got, want, 1e-5)


def test_round_trip_jax_hf_jax_is_bitwise(run, tmp_path):
    run_dir, cfg, params = run
    out, back = str(tmp_path / "hf"), str(tmp_path / "back")
    hf.to_hf(run_dir, out, dtype="float32", log=lambda *a: None)
    lines = []
    hf.from_hf(out, back, log=lines.append)
    cfg2 = rundir.load_config(back)
    for k in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "rope_theta", "norm_eps",
              "max_seq_len", "param_dtype"):
        assert cfg2.model[k] == cfg.model[k], k
    assert {k: cfg2.tokens[k] for k in RUN_TOKENS} == RUN_TOKENS  # every role, from our config.json
    assert ", ".join(f"{k}={v} (config.json)" for k, v in RUN_TOKENS.items()) in "\n".join(lines)
    restored, step = checkpoint.restore_params(back, model_lib.Model(cfg2.model).abstract_params())
    assert step == 0
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), restored, params)


def test_round_trip_hf_jax_hf_is_byte_identical(run, tmp_path):
    run_dir, cfg, params = run
    first, imported, second = (str(tmp_path / n) for n in ("hf1", "run2", "hf2"))
    hf.to_hf(run_dir, first, dtype="bfloat16", log=lambda *a: None)
    hf.from_hf(first, imported, log=lambda *a: None)
    assert rundir.load_config(imported).model.param_dtype == "bfloat16"
    hf.to_hf(imported, second, log=lambda *a: None)  # default dtype: the checkpoint's (bfloat16)
    assert _hf_tensors(first) == _hf_tensors(second)
    for n in ("config.json", "generation_config.json"):
        assert open(os.path.join(first, n)).read() == open(os.path.join(second, n)).read()


@pytest.mark.slow
def test_sharded_checkpoint_exports_the_same_files(tiny_cfg, tmp_path, one_device):
    cfg = _cfg(tiny_cfg)
    params = _random_params(cfg)
    single = _save_run(str(tmp_path / "one"), cfg, params, one_device)
    sharded_cfg = cfg.copy_and_resolve_references()
    sharded_cfg.mesh.fsdp, sharded_cfg.mesh.tensor = 4, 2
    sharded = _save_run(str(tmp_path / "eight"), sharded_cfg, params, jax.devices())
    meta = json.load(open(os.path.join(sharded, "checkpoints", "7", "params", "_sharding")))
    assert any("fsdp" in v and "tensor" in v for v in meta.values())  # really saved sharded
    a, b = str(tmp_path / "hf_one"), str(tmp_path / "hf_eight")
    hf.to_hf(single, a, log=lambda *a: None)
    hf.to_hf(sharded, b, log=lambda *a: None)
    files = sorted(os.listdir(a))
    assert files == sorted(os.listdir(b))
    for n in files:
        if n != "config.json":  # the mesh is part of the run's config, not of config.json; compare it anyway below
            assert open(os.path.join(a, n), "rb").read() == open(os.path.join(b, n), "rb").read(), n
    assert json.load(open(os.path.join(a, "config.json"))) == json.load(open(os.path.join(b, "config.json")))


@pytest.mark.slow
def test_block_ff_out_and_output_head_are_never_confused(tiny_cfg, tmp_path):
    """vocab == ffn_dim == d_model: both `ff_out` weights (and their transposes) have the same shape [64, 64], so
    only the names tell them apart."""
    cfg = _cfg(tiny_cfg, vocab=64, ffn=64)
    cfg.model.d_model = 64
    params = _random_params(cfg)
    run_dir = _save_run(str(tmp_path / "run"), cfg, params)
    out, back = str(tmp_path / "hf"), str(tmp_path / "back")
    hf.to_hf(run_dir, out, dtype="float32", log=lambda *a: None)
    head = _hf_array(out, "model.transformer.ff_out.weight")
    down = _hf_array(out, "model.transformer.blocks.0.ff_out.weight")
    assert head.shape == down.shape == (64, 64)
    np.testing.assert_array_equal(head, np.asarray(params["lm_head"]).T)
    np.testing.assert_array_equal(down, np.asarray(params["blocks"]["ff_out"][0]).T)
    hf.from_hf(out, back, log=lambda *a: None)
    restored, _ = checkpoint.restore_params(back, model_lib.Model(cfg.model).abstract_params())
    np.testing.assert_array_equal(restored["lm_head"], params["lm_head"])
    np.testing.assert_array_equal(restored["blocks"]["ff_out"], params["blocks"]["ff_out"])
    tokens = _tokens(cfg)
    with torch.no_grad():
        _close(torch_model.load(out)(torch.from_numpy(tokens)).numpy(), _jax_logits(cfg, params, tokens), 1e-5)


def _rewrite(hf_dir, edit):
    """Rewrites an exported directory's tensors as one shard after `edit({name: array})`."""
    tensors = {n: _hf_array(hf_dir, n) for n in hf.read_hf_index(hf_dir)}
    edit(tensors)
    for n in os.listdir(hf_dir):
        if n.endswith(".safetensors") or n.endswith(".index.json"):
            os.remove(os.path.join(hf_dir, n))
    w = safetensors_io.SafetensorsWriter(os.path.join(hf_dir, "model.safetensors"),
                                         [(n, "F32", a.shape) for n, a in tensors.items()])
    for n, a in tensors.items():
        w.write(n, a)
    w.close()


@pytest.mark.parametrize("edit", [{"objective": "block"}, {"model.shift_logits": True}])
def test_export_refuses_what_the_layouts_cannot_compute(exported, tmp_path, edit):
    """A block-diffusion or token-shifted run would compute something else under either HF modeling code."""
    _, run_dir, _, _ = exported
    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy)
    with open(os.path.join(copy, "config.json")) as f:
        c = json.load(f)
    for k, v in edit.items():
        *path, last = k.split(".")
        d = c
        for p in path:
            d = d[p]
        d[last] = v
    with open(os.path.join(copy, "config.json"), "w") as f:
        json.dump(c, f)
    for layout in hf.LAYOUTS:
        with pytest.raises(hf.ConvertError, match="neither Hugging Face layout's modeling code"):
            hf.to_hf(copy, str(tmp_path / "hf"), layout=layout, log=lambda *a: None)



@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.update({"model.transformer.blocks.1.k_proj.weight": np.zeros((32, 32), np.float32)}),
     ["model.transformer.blocks.1.k_proj.weight: shape [32, 32], expected [16, 32]"]),
    (lambda t: t.pop("model.transformer.blocks.0.up_proj.weight"),
     ["model.transformer.blocks.0.up_proj.weight: missing (expected shape [64, 32])"]),
    (lambda t: t.update({"model.transformer.blocks.0.mlp.weight": np.zeros((2,), np.float32)}),
     ["model.transformer.blocks.0.mlp.weight: unknown tensor name"]),
    (lambda t: (t.pop("model.transformer.ff_out.weight"), t.pop("model.transformer.ln_f.weight")),
     ["model.transformer.ff_out.weight: missing", "model.transformer.ln_f.weight: missing"]),
], ids=["wrong_shape", "missing", "unknown", "two_missing"])
def test_import_errors_name_the_tensor(exported, tmp_path, edit, expected):
    out = str(tmp_path / "hf")
    shutil.copytree(exported[0], out)
    _rewrite(out, edit)
    with pytest.raises(hf.ConvertError) as e:
        hf.from_hf(out, str(tmp_path / "back"), log=lambda *a: None)
    for text in expected:
        assert text in str(e.value)
    assert not os.path.exists(str(tmp_path / "back"))


@pytest.mark.slow
def test_cli_and_init_from(exported, tmp_path, capsys):
    """`llada convert` both ways; the imported directory starts a fine-tuning run (checkpoint.init_from)."""
    _, run_dir, cfg, params = exported
    out, back = str(tmp_path / "hf"), str(tmp_path / "back")
    assert cli.main(["convert", "to-hf", f"--workdir={run_dir}", f"--out={out}", "--dtype=float32"]) == 0
    assert cli.main(["convert", "from-hf", out, f"--out={back}"]) == 0
    assert "to-hf: wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exists and is not empty"):
        cli.main(["convert", "from-hf", out, f"--out={back}"])
    with pytest.raises(SystemExit, match="no checkpoint step 3"):
        cli.main(["convert", "to-hf", f"--workdir={run_dir}", "--step=3", f"--out={out}"])
    ft = cfg.copy_and_resolve_references()
    ft.checkpoint.init_from, ft.train.steps, ft.train.log_every, ft.optim.peak_lr = back, 1, 1, 0.0
    state, _ = train.train(ft, str(tmp_path / "ft"), log=lambda *a: None)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state["params"], params)


RELEASE_PIECES = {"<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|mdm_mask|>": 126336,
                  "<|start_header_id|>": 126346, "<|end_header_id|>": 126347, "<|eot_id|>": 126348}


def _release_layout(path, vocab=126464):
    """An HF directory as the release lays it out (random bfloat16 weights of a one-layer model): config.json with
    only the release's token keys (mask, EOS, pad), generation_config.json with BOS and EOS, and
    tokenizer_config.json naming the special pieces at the release's ids."""
    cfg = _cfg(_tiny(), vocab=vocab)
    cfg.model.d_model, cfg.model.n_heads, cfg.model.n_kv_heads, cfg.model.n_layers = 16, 2, 2, 1
    os.makedirs(path)
    hc = {k: v for k, v in hf.hf_config(cfg, "bfloat16").items() if k not in (
        "bos_token_id", "eot_token_id", "start_header_token_id", "end_header_token_id")}
    hc.update(mask_token_id=126336, eos_token_id=126081, pad_token_id=126081)
    tok = {"added_tokens_decoder": {str(i): {"content": p, "special": True} for p, i in RELEASE_PIECES.items()},
           "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    for name, obj in (("config.json", hc), ("generation_config.json", {"bos_token_id": 126080, "eos_token_id": 126081}),
                      ("tokenizer_config.json", tok)):
        with open(os.path.join(path, name), "w") as f:
            json.dump(obj, f)
    entries = [(t.name, "BF16", t.hf) for tensors in hf.tensor_table(cfg.model).values() for t in tensors]
    writer = safetensors_io.SafetensorsWriter(os.path.join(path, "model.safetensors"), entries)
    rng = np.random.default_rng(0)
    for name, _, shape in entries:
        writer.write(name, rng.normal(size=shape).astype(hf.ST_DTYPES["BF16"]))
    writer.close()
    return path


def test_release_layout_import_takes_every_role_id(tmp_path, capsys):
    """`llada convert from-hf` of a released-layout directory: mask, EOS and pad from config.json, BOS from
    generation_config.json, end of turn and the chat headers from tokenizer_config.json, each printed with its
    source; a float32 import computes in float32 although the named config (the 8B's) says bfloat16."""
    src, out = _release_layout(str(tmp_path / "release")), str(tmp_path / "run")
    assert cli.main(["convert", "from-hf", src, f"--out={out}", "--config=configs/llada_8b.py",
                     "--dtype=float32"]) == 0
    cfg = rundir.load_config(out)
    assert dict(cfg.tokens) == config_lib.RELEASE_TOKENS
    assert cfg.model.param_dtype == cfg.model.dtype == "float32"
    assert ("from-hf: token ids mask_id=126336 (config.json), eos_id=126081 (config.json), pad_id=126081 "
            "(config.json), bos_id=126080 (generation_config.json), eot_id=126348 (tokenizer_config.json), "
            "start_header_id=126346 (tokenizer_config.json), end_header_id=126347 (tokenizer_config.json)"
            ) in capsys.readouterr().out


def test_release_ids_apply_only_to_the_released_layout(tmp_path):
    """Without tokenizer files: the release's ids for the released layout (vocab 126464, mask 126336), an error
    naming the missing roles otherwise."""
    release = {"d_model": 16, "n_layers": 1, "n_heads": 2, "vocab_size": 126464, "mask_token_id": 126336,
               "eos_token_id": 126081, "pad_token_id": 126081}
    tokens = config_lib.default_config().tokens
    sources = hf.token_ids_from_hf(str(tmp_path), release, {}, tokens)
    assert dict(tokens) == config_lib.RELEASE_TOKENS
    assert [sources[k] for k in ("mask_id", "bos_id", "eot_id")] == ["config.json", "release defaults",
                                                                     "release defaults"]
    for other in ({"mask_token_id": 5}, {"vocab_size": 50000}):
        with pytest.raises(hf.ConvertError, match="token roles bos_id, eot_id, start_header_id, end_header_id"):
            hf.token_ids_from_hf(str(tmp_path), {**release, **other}, {}, config_lib.default_config().tokens)


def test_import_without_role_ids_fails_until_they_are_given(exported, tmp_path, capsys):
    """Our export with the chat ids stripped and a non-release vocab: the import fails naming the missing roles and
    the overrides that set them; a tokenizer.json naming the chat pieces plus --config.tokens.bos_id complete it."""
    src, out = str(tmp_path / "hf"), str(tmp_path / "run")
    shutil.copytree(exported[0], src)
    os.remove(os.path.join(src, "generation_config.json"))
    with open(os.path.join(src, "config.json")) as f:
        hc = json.load(f)
    for key in ("bos_token_id", "eot_token_id", "start_header_token_id", "end_header_token_id"):
        del hc[key]
    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump(hc, f)
    with pytest.raises(hf.ConvertError) as e:
        hf.from_hf(src, out, log=lambda *a: None)
    assert "no id for the token roles bos_id, eot_id, start_header_id, end_header_id" in str(e.value)
    assert ("--config.tokens.bos_id=ID --config.tokens.eot_id=ID --config.tokens.start_header_id=ID "
            "--config.tokens.end_header_id=ID") in str(e.value)
    assert not os.path.exists(out)
    with open(os.path.join(src, "tokenizer.json"), "w") as f:
        json.dump({"added_tokens": [{"id": 30 + i, "content": p} for i, p in enumerate(
            ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"])], "model": {"vocab": {"a": 7}}}, f)
    assert cli.main(["convert", "from-hf", src, f"--out={out}", "--config.tokens.bos_id=20"]) == 0
    t = rundir.load_config(out).tokens
    assert (t.bos_id, t.eot_id, t.start_header_id, t.end_header_id) == (20, 30, 31, 32)
    assert "bos_id=20 (override), eot_id=30 (tokenizer.json)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="model.d_model is read from"):
        cli.main(["convert", "from-hf", src, f"--out={out}2", "--config.model.d_model=64"])


# -- Llama-architecture checkpoints (adaptation from an autoregressive model) ------------------------------------------

@pytest.mark.parametrize("tied,head_dim", [(False, None), (True, None), (False, 16)],
                         ids=["untied", "tied", "head_dim16"])
@pytest.mark.slow
def test_llama_import_logits_equal_transformers(tmp_path, tied, head_dim):
    """A tiny random transformers LlamaForCausalLM (GQA, its own RoPE theta, tied or untied head, a head_dim other
    than d_model / n_heads) imported by from-hf: our causal logits = transformers' float32 logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from llada_jax import inference
    kw = {"head_dim": head_dim} if head_dim else {}
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=48, rope_theta=123.0, rms_norm_eps=1e-5,
                                      tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, **kw)
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1, so that a dropped norm weight would show
        for name, p in llama.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    hf_dir, out = str(tmp_path / "llama"), str(tmp_path / "run")
    llama.save_pretrained(hf_dir, safe_serialization=True)
    roles = [("tokens.mask_id", "47"), ("tokens.pad_id", "2"), ("tokens.eot_id", "46"),
             ("tokens.start_header_id", "45"), ("tokens.end_header_id", "44")]
    hf.from_hf(hf_dir, out, overrides=roles, log=lambda *a: None)
    run = inference.load_run(out, [("model.attention", "xla")])
    assert run.cfg.objective == "arm" and run.cfg.model.rope_theta == 123.0 and run.cfg.tokens.bos_id == 1
    assert run.cfg.model.tie_embeddings == tied and ("lm_head" in run.params) != tied  # a tied head stays tied
    tokens = np.random.default_rng(0).integers(0, 48, (2, 10))
    with torch.no_grad():
        want = llama(torch.as_tensor(tokens)).logits.numpy()
    got = np.asarray(run.model.apply(run.params, jnp.asarray(tokens), causal=True))
    _close(got, want, 1e-5)


def test_llama_import_refuses_what_it_cannot_hold(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                      vocab_size=48, attention_bias=True,
                                      rope_scaling={"rope_type": "linear", "factor": 2.0})
    hf_dir = str(tmp_path / "llama")
    transformers.LlamaForCausalLM(config).save_pretrained(hf_dir, safe_serialization=True)
    with pytest.raises(hf.ConvertError, match="attention_bias=True.*rope type 'linear'"):
        hf.from_hf(hf_dir, str(tmp_path / "run"), log=lambda *a: None)


@pytest.mark.slow
def test_llama_export_logits_equal_transformers_and_round_trip(run, tmp_path):
    """`to-hf --layout=llama` of a run (GQA and MHA): transformers' own LlamaForCausalLM (no remote code) gives our
    causal logits; importing it back gives the same params bit for bit and every token role."""
    transformers = pytest.importorskip("transformers")
    run_dir, cfg, params = run
    out, back = str(tmp_path / "llama"), str(tmp_path / "back")
    summary = hf.to_hf(run_dir, out, dtype="float32", layout="llama", log=lambda *a: None)
    assert summary["layout"] == "llama" and not [n for n in os.listdir(out) if n.endswith(".py")]
    llama = transformers.LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    tokens = _tokens(cfg)
    with torch.no_grad():
        want = llama(torch.as_tensor(tokens)).logits.numpy()
    got = np.asarray(model_lib.Model(cfg.model).apply(params, jnp.asarray(tokens), causal=True))
    _close(got, want, 1e-5)
    hf.from_hf(out, back, log=lambda *a: None)
    cfg2 = rundir.load_config(back)
    assert cfg2.objective == "arm" and {k: cfg2.tokens[k] for k in RUN_TOKENS} == RUN_TOKENS
    restored, _ = checkpoint.restore_params(back, model_lib.Model(cfg2.model).abstract_params())
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), restored, params)
