"""The parameter table (model.param_shapes) is the one description of the parameters: a parameter added to a copy of
it is initialised, sharded, counted, decayed, chunked in checkpoints, exported to and imported from the HF layout."""
import os

import jax
import numpy as np
import pytest

from llada_jax import checkpoint, model as model_lib, optim, rundir
from llada_jax.convert import hf
from llada_jax.model import Param

REAL_TABLE = model_lib.param_shapes


def table_with_new_params(m, lora=None):
    """The real table plus a per-layer norm (a QK-norm), a per-layer projection and a whole-model norm."""
    t = REAL_TABLE(m, lora)
    d, L = m.d_model, m.n_layers
    t["blocks"]["q_norm"] = Param((L, d), ("layers", "norm"), "ones", "norm", "blocks.{layer}.q_norm.weight", (d,))
    t["blocks"]["extra_proj"] = Param((L, d, 8), ("layers", "embed", "mlp"), "normal", "matrix",
                                      "blocks.{layer}.extra_proj.weight", (8, d), hf_linear=True, fan_in=d)
    t["emb_norm"] = Param((d,), ("norm",), "ones", "norm", "emb_norm.weight", (d,))
    return t


@pytest.fixture
def extended(tiny_cfg, monkeypatch):
    monkeypatch.setattr(model_lib, "param_shapes", table_with_new_params)
    tiny_cfg.checkpoint.async_save = False
    return tiny_cfg


def test_the_real_table_describes_every_parameter(tiny_cfg):
    m = tiny_cfg.model
    params = model_lib.Model(m).init(jax.random.key(0))
    flat = model_lib.flat_params(m)
    assert list(flat)[:3] == ["wte", "blocks.attn_norm", "blocks.q_proj"] and list(flat)[-2:] == ["ln_f", "lm_head"]
    assert {k: p.shape for k, p in flat.items()} == hf.leaf_shapes(m)
    leaves = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert sorted(leaves.values()) == sorted(p.shape for p in flat.values())
    assert model_lib.count_params(m) == sum(int(np.prod(s)) for s in leaves.values())


def test_a_new_parameter_is_initialised_counted_and_decayed(extended):
    m, o = extended.model, extended.optim
    model = model_lib.Model(m)
    params = model.init(jax.random.key(0))
    d, L = m.d_model, m.n_layers
    np.testing.assert_array_equal(params["blocks"]["q_norm"], np.ones((L, d)))
    np.testing.assert_array_equal(params["emb_norm"], np.ones((d,)))
    w = np.asarray(params["blocks"]["extra_proj"])
    assert w.shape == (L, d, 8) and 0.5 < w.std() * np.sqrt(d) < 1.5 and np.abs(w).max() * np.sqrt(d) <= 3
    assert model.param_axes()["blocks"]["q_norm"] == ("layers", "norm")
    assert model.abstract_params()["blocks"]["extra_proj"].shape == (L, d, 8)
    real = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(REAL_TABLE(m), is_leaf=model_lib.is_param))
    assert model_lib.count_params(m) == real + L * d + L * d * 8 + d
    assert model_lib.count_params(m, embeddings=False) == real + L * d + L * d * 8 + d - 2 * m.vocab_size * d
    mask = optim.decay_mask(params, o, m)
    assert mask["blocks"]["extra_proj"] and not mask["blocks"]["q_norm"] and not mask["emb_norm"]
    o.decay_norms = True
    assert optim.decay_mask(params, o, m)["blocks"]["q_norm"]
    args = checkpoint.params_save_args(params, m)
    assert args["blocks"]["extra_proj"].shard_axes == (0,)
    assert args["emb_norm"].chunk_byte_size == checkpoint.CHUNK_BYTES


def test_a_new_parameter_is_exported_and_imported(extended, tmp_path):
    cfg = extended
    m = cfg.model
    abstract = model_lib.Model(m).abstract_params()
    leaves, tree = jax.tree.flatten(abstract)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    params = jax.tree.unflatten(tree, [jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, leaves)])
    run_dir, out, back = (str(tmp_path / n) for n in ("run", "hf", "back"))
    ckpt = checkpoint.Checkpointer(os.path.join(run_dir, "checkpoints"), cfg)
    ckpt.save(5, {"params": params, "step": np.int32(5)}, {"position": 0}, cfg, force=True)
    ckpt.wait()
    ckpt.close()
    rundir.save_config(run_dir, cfg)
    hf.to_hf(run_dir, out, dtype="float32", log=lambda *a: None)
    names = set(hf.read_hf_index(out))
    assert {f"model.transformer.blocks.{i}.q_norm.weight" for i in range(m.n_layers)} <= names
    assert "model.transformer.emb_norm.weight" in names
    entry = hf.read_hf_index(out)["model.transformer.blocks.1.extra_proj.weight"]
    assert tuple(entry[2]) == (8, m.d_model)  # HF [out, in]
    hf.from_hf(out, back, log=lambda *a: None)
    restored, _ = checkpoint.restore_params(back, abstract)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), restored, params)
