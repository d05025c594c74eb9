"""Typed configs: presets, dotted overrides, one-line errors naming the key, YAML round trip."""

import dataclasses

import pytest

from jaxlm.config import Config, load_config, preset_names, to_yaml
from jaxlm.errors import ConfigError

PRESETS = [  # the presets of published architectures
    "bert-base",
    "bert-large",
    "gpt2-large",
    "gpt2-medium",
    "gpt2-small",
    "gpt2-xl",
    "transformer-base",
]


def test_preset_names():
    assert set(PRESETS) <= set(preset_names())


@pytest.mark.parametrize("preset", preset_names())
def test_presets_load(preset):
    config = load_config(preset)
    assert isinstance(config, Config)
    assert config.model.family in ("gpt", "bert", "seq2seq")


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_families(preset):
    family = {"bert": "bert", "gpt2": "gpt", "transformer": "seq2seq"}[preset.split("-")[0]]
    assert load_config(preset).model.family == family


def test_preset_values():
    """A few architecture figures from the papers."""
    gpt2 = load_config("gpt2-medium").model
    assert (gpt2.num_layers, gpt2.embed_dim, gpt2.num_heads, gpt2.vocab_size) == (
        24,
        1024,
        16,
        50257,
    )
    bert = load_config("bert-base").model
    assert (bert.norm_position, bert.activation, bert.norm_eps) == ("post", "gelu_exact", 1e-12)
    base = load_config("transformer-base").model
    assert (base.num_layers, base.decoder_layers, base.embed_dim, base.mlp_dim) == (6, 6, 512, 2048)
    assert base.position_embedding == "sinusoidal" and base.scale_embeddings
    assert load_config("transformer-base").train.label_smoothing == 0.1


def test_defaults_without_a_file():
    assert load_config() == Config()
    assert load_config(None, []) == Config()


def test_dotted_overrides_convert_types():
    config = load_config(
        "gpt2-small",
        [
            "model.num_layers=4",
            "optim.learning_rate=1e-3",
            "model.dropout_rate=0.25",
            "model.tie_embeddings=false",
            "model.num_kv_heads=4",
            "model.dtype=bfloat16",
            "data.train_files=[a.txt,b.txt]",
            "train.workdir=runs/x",
        ],
    )
    m = config.model
    assert m.num_layers == 4 and type(m.num_layers) is int
    assert config.optim.learning_rate == 1e-3 and type(config.optim.learning_rate) is float
    assert m.dropout_rate == 0.25
    assert m.tie_embeddings is False
    assert m.num_kv_heads == 4
    assert m.dtype == "bfloat16"
    assert config.data.train_files == ["a.txt", "b.txt"]
    assert config.train.workdir == "runs/x"
    assert m.embed_dim == 768  # untouched values keep the preset's


def test_list_override():
    config = load_config("bert-base", ["model.heads=[mlm,nsp]"])
    assert config.model.heads == ["mlm", "nsp"] and isinstance(config.model.heads, list)
    assert load_config("bert-base", ["model.heads=[]"]).model.heads == []


def test_later_overrides_win():
    config = load_config(None, ["model.num_layers=4", "model.num_layers=6"])
    assert config.model.num_layers == 6


def test_yaml_file_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n  num_layers: 3\n  heads: [mlm]\n  family: bert\noptim:\n  learning_rate: 1e-4\n"
    )
    config = load_config(str(path), ["model.num_layers=5"])
    assert config.model.num_layers == 5
    assert config.model.heads == ["mlm"] and config.model.family == "bert"
    assert config.optim.learning_rate == 1e-4  # YAML 1.1 reads 1e-4 as a string: converted


def assert_one_line_error(match: str, name_or_path, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(name_or_path, list(overrides))
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and message
    assert match in message, message
    return message


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.foo=1", "model.foo"),
        ("optim.lr=1", "optim.lr"),
        ("nosection.key=1", "nosection"),
        ("model.num_layers=abc", "model.num_layers"),
        ("model.tie_embeddings=maybe", "model.tie_embeddings"),
        ("optim.learning_rate=fast", "optim.learning_rate"),
        ("model.norm=batchnorm", "model.norm"),
        ("model.family=rnn", "model.family"),
        ("model.heads=[mlm,ner]", "model.heads"),
        ("model.num_heads=5", "model.num_heads"),
        ("model.num_kv_heads=5", "model.num_kv_heads"),
        ("model.position_embedding=relative", "model.position_embedding"),  # seq2seq only
        ("model.relative_buckets=7", "model.relative_buckets"),
        ("model.rope_scaling=llama3", "model.rope_scaling"),  # gpt2-small's positions are learned
        ("model.rope_scaling=yarn", "model.rope_scaling"),
        ("model.rope_high_freq_factor=0.5", "model.rope_high_freq_factor"),
        ("model.rope_scaling_factor=0", "model.rope_scaling_factor"),
        ("model.sliding_window=0", "model.sliding_window"),
        ("model.norm_unit_offset=true", "model.norm_unit_offset"),  # gpt2-small's are layernorms
        ("model.global_attention_every=2", "model.global_attention_every"),  # without a window
        ("model.attention_softcap=0", "model.attention_softcap"),
        ("model.logit_softcap=-30", "model.logit_softcap"),
        ("model.attention_scale=0", "model.attention_scale"),
        ("model.rope_local_base=1e4", "model.rope_local_base"),  # no full-attention layers
        ("model.rotary_dim=16", "model.rotary_dim"),  # gpt2-small's positions are learned
        ("model.block_layout=parallel_attention", "model.block_layout"),
        ("model.qk_norm_scope=heads", "model.qk_norm_scope"),  # gpt2-small has no such norms
        ("model.qk_norm_scope=layer", "model.qk_norm_scope"),
        ("model.rope_beta_slow=64", "model.rope_beta_fast"),  # beyond beta_fast's 32
        ("model.rope_attention_factor=0", "model.rope_attention_factor"),
        ("model.relative_max_distance=4", "model.relative_max_distance"),
        ("data.seq_len=4096", "data.seq_len"),
        ("optim.learning_rate=-1", "optim.learning_rate"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("optim.grad_clip=-1", "optim.grad_clip"),
        ("optim.min_lr_ratio=2", "optim.min_lr_ratio"),
        ("optim.cooldown_fraction=0", "optim.cooldown_fraction"),
        ("optim.b2=1", "optim.b2"),
        ("optim.eps=0", "optim.eps"),
        ("optim.adafactor_decay_rate=0", "optim.adafactor_decay_rate"),
        ("optim.adafactor_momentum=1", "optim.adafactor_momentum"),
        ("train.eval_batches=-1", "train.eval_batches"),
        ("train.checkpoint_every=-5", "train.checkpoint_every"),
        ("train.keep_checkpoints=0", "train.keep_checkpoints"),
        ("train.best_mode=highest", "train.best_mode"),
        ("train.eval_bleu=true", "train.eval_bleu"),
        (
            "train.eval_bleu_beams=0",
            "train.eval_bleu_beams",
        ),  # gpt2-small is not a translation model
        ("train.label_smoothing=1", "train.label_smoothing"),
        ("train.z_loss=-1e-4", "train.z_loss"),
        ("sample.top_p=1.5", "sample.top_p"),
        ("model.num_layers", "model.num_layers"),
        ("finetune.trainable=[decoder/layers[8:]]", "finetune.trainable=[decoder/layers[8:]]"),
    ],
)
def test_bad_override_raises_one_line_error_naming_the_key(override, key):
    assert_one_line_error(key, "gpt2-small", [override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.rotary_dim=15", "an even number of features in [2, head_dim=64]"),
        ("model.rope_scaling=longrope", "longrope needs 8 positive factors (one per rotary"),
        ("model.rotary_dim=128", "an even number of features in [2, head_dim=64]"),
        ("model.norm_position=post", "parallel blocks are built for the gpt family with model"),
    ],
)
def test_partial_rotary_and_parallel_blocks_are_checked(override, message):
    assert_one_line_error(message, "pythia-160m", [override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.position_embedding=alibi", "alibi is built for the gpt family, not bert"),
        ("model.embed_norm=true", "is a gpt's (bert's embedding norm comes with model.norm_pos"),
    ],
)
def test_gpt_only_positions_and_norms_are_refused_for_bert(override, message):
    assert_one_line_error(message, "bert-base", [override])


def test_capped_scores_on_a_backend_that_cannot_cap_them_are_refused():
    message = assert_one_line_error(
        "model.attention_softcap", "gemma2-2b", ["model.attention_backend=cudnn"]
    )
    assert "auto, reference, pallas" in message


def test_url_workdir_is_refused_not_made_a_local_folder():
    message = assert_one_line_error("train.workdir", None, ["train.workdir=gs://bucket/run"])
    assert "gcsfuse" in message


def test_unknown_key_message():
    message = assert_one_line_error("model.foo", None, ["model.foo=1"])
    assert "unknown" in message


def test_wrong_type_message():
    message = assert_one_line_error("model.num_layers", None, ["model.num_layers=abc"])
    assert "abc" in message


def test_invalid_choice_message_lists_the_choices():
    message = assert_one_line_error("model.norm", None, ["model.norm=batchnorm"])
    assert "batchnorm" in message and "layernorm" in message and "rmsnorm" in message


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "bad_key.yaml"
    path.write_text("model:\n  num_layers: 2\n  foo: 1\n")
    assert_one_line_error("model.foo", str(path))


def test_wrong_type_in_yaml_file(tmp_path):
    path = tmp_path / "bad_type.yaml"
    path.write_text("model:\n  num_layers: many\n")
    assert_one_line_error("model.num_layers", str(path))


def test_missing_config_file(tmp_path):
    path = tmp_path / "absent.yaml"
    message = assert_one_line_error(str(path), str(path))
    assert "not found" in message


def test_malformed_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  num_layers: [2\n  embed_dim: : 3\n")
    assert_one_line_error(str(path), str(path))


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- optim\n")
    assert_one_line_error(str(path), str(path))


def test_unknown_preset():
    message = assert_one_line_error("gpt5-huge", "gpt5-huge")
    assert "gpt2-small" in message  # it lists the presets there are


@pytest.mark.parametrize(
    "preset, overrides",
    [
        ("gpt2-small", []),
        ("bert-base", ["model.heads=[mlm,nsp]", "optim.learning_rate=1e-3"]),
        ("transformer-base", ["model.num_kv_heads=4", "data.train_files=[x.txt]"]),
        (None, ["model.dtype=bfloat16", "sample.prompts=[Hello,Once upon a time]"]),
    ],
)
def test_to_yaml_round_trip(tmp_path, preset, overrides):
    config = load_config(preset, overrides)
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(config))
    loaded = load_config(str(path))
    assert loaded == config
    assert dataclasses.asdict(loaded) == dataclasses.asdict(config)


def test_bert_takes_no_output_bias_beside_its_masked_lm_bias():
    assert "own" in assert_one_line_error(
        "model.output_bias", "bert-base", ["model.output_bias=true"]
    )
