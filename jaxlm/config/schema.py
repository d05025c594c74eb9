"""The config sections as dataclasses, with their defaults."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _hash_by_value(config) -> int:
    """Configs that key compilation caches hash by their values."""
    return hash(json.dumps(dataclasses.asdict(config), sort_keys=True))


@dataclass
class ModelConfig:
    """Architecture of one of the three families; defaults are GPT-2 small."""

    __hash__ = _hash_by_value

    family: str = "gpt"  # gpt (causal LM) | bert (encoder) | seq2seq (encoder-decoder)
    vocab_size: int = 50257  # tokens the tokenizer can produce
    vocab_multiple: int = 128  # embedding rows padded to a multiple of this (speed only)
    max_len: int = 1024  # longest sequence (size of the position table)
    num_layers: int = 12  # encoder layers (bert, seq2seq) or decoder layers (gpt)
    num_decoder_layers: int | None = None  # seq2seq decoder layers; None = num_layers
    embed_dim: int = 768
    num_heads: int = 12
    num_kv_heads: int | None = None  # grouped-query attention; None = num_heads
    head_dim: int | None = None  # None = embed_dim // num_heads
    mlp_dim: int = 3072
    activation: str = "gelu"  # gelu (tanh approx.) | gelu_exact | relu | silu
    mlp_type: str = "plain"  # plain: act(x Wi) Wo | gated (SwiGLU with silu): (act(x Wg) * x Wi) Wo
    # gpt: each block's MLP is this many experts (mixture of experts, jaxlm.layers.moe), of which
    # a router picks experts_per_token for each token; 0 = one MLP
    num_experts: int = 0
    experts_per_token: int = 2
    # the chosen experts' weights sum to one (Mixtral); false: their router probabilities (OLMoE)
    router_renormalize: bool = True
    # training: each expert takes at most this factor x its even share of a row's token choices,
    # a token over it skipping the expert (Switch Transformer); 0 = no token dropped. Evaluation
    # and decoding never drop tokens
    expert_capacity_factor: float = 0.0
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    norm_unit_offset: bool = False  # rmsnorm: scales by 1 + weight, weights from 0 (Gemma)
    norm_scale: bool = True  # norms scale by a learned weight (OLMo 1: no, nor any bias)
    norm_bias: bool = True  # layernorm: norms add a learned bias (MPT: no)
    # pre (GPT-2) | post (BERT, original Transformer) | sandwich (pre, and each sublayer's output
    # normalized again before the residual sum: Gemma 2) | output (only each sublayer's output
    # normalized before the residual sum: OLMo 2)
    norm_position: str = "pre"
    # gpt, pre-norm: sequential (attention, then the MLP on its output) | parallel (attention and
    # the MLP both read the block's input, each through its own norm, and both add to it:
    # GPT-NeoX) | parallel_shared_norm (... through one norm: GPT-J, Phi-2, PaLM)
    block_layout: str = "sequential"
    # learned | sinusoidal | rotary | relative (seq2seq: T5's bucketed relative position bias) |
    # alibi (gpt: each head's scores biased by -slope x distance, no position embedding: BLOOM)
    position_embedding: str = "learned"
    rope_base: float = 10_000.0
    # rotary: the leading features of each head that rotate (an even number; pairs (i, i +
    # rotary_dim / 2)), the others passing unrotated (GPT-NeoX: a quarter); None = all
    rotary_dim: int | None = None
    # rotary: none | linear (every frequency divided by rope_scaling_factor) | llama3 (Llama 3.1:
    # frequencies with wavelengths beyond rope_original_max_len / rope_low_freq_factor divided by
    # the factor, those below rope_original_max_len / rope_high_freq_factor kept, a blend between)
    # | yarn (those turning over rope_original_max_len positions more than rope_beta_fast times
    # kept, fewer than rope_beta_slow times divided, a blend between; queries and keys scaled by
    # rope_attention_factor) | longrope (Phi-3.5: each frequency divided by its own factor, from
    # rope_short_factors while every position of a pass is below rope_original_max_len, else from
    # rope_long_factors; queries and keys scaled by rope_attention_factor)
    rope_scaling: str = "none"
    rope_scaling_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    rope_beta_fast: float = 32.0  # yarn
    rope_beta_slow: float = 1.0  # yarn
    # yarn, longrope; None = 0.1 ln(rope_scaling_factor) + 1 (yarn), sqrt(1 + ln(factor) /
    # ln(rope_original_max_len)) (longrope)
    rope_attention_factor: float | None = None
    rope_short_factors: list[float] = field(default_factory=list)  # longrope: one a frequency
    rope_long_factors: list[float] = field(default_factory=list)  # longrope: one a frequency
    # with global_attention_every: the rotary base of the sliding-window layers, unscaled (Gemma
    # 3: 10,000, its full-attention layers' rope_base 1,000,000); None = as the others
    rope_local_base: float | None = None
    relative_buckets: int = 32  # relative: buckets of key - query distances (per direction: half)
    relative_max_distance: int = 128  # relative: distances from here on share the last bucket
    # sinusoidal: interleaved (sin, cos, sin, ... as in the paper) | halves (all the sines, then
    # all the cosines: Marian, tensor2tensor)
    sinusoidal_layout: str = "interleaved"
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(embed_dim)
    embed_norm: bool = False  # gpt: a norm of the embedded tokens before the first block (BLOOM)
    tie_embeddings: bool = True  # output logits use the token embedding table
    output_bias: bool = False  # gpt, seq2seq: a learned bias added to the logits
    use_bias: bool = True
    # biases on the attention's four projections; None = use_bias (GPT-J: none, its MLP's kept)
    attention_bias: bool | None = None
    qkv_bias: bool = False  # biases on the query, key and value projections alone (Qwen2)
    # queries and keys normalized before rotary, by norms of model.norm's kind without biases
    # (Qwen3's RMSNorm, StableLM 2 12B's LayerNorm)
    qk_norm: bool = False
    # the query, key and value projections' outputs clipped to [-c, c] (MPT, OLMo 1); None = not
    clip_qkv: float | None = None
    # qk_norm over each head's features with one scale for every head (head: Qwen3, Gemma 3),
    # over all heads' features together (heads: OLMo 2), or over each head's with a scale each
    # (each_head: StableLM 2 12B)
    qk_norm_scope: str = "head"
    sliding_window: int | None = None  # gpt: each token attends to the last N, itself included
    # with sliding_window: every Nth layer (the Nth, 2Nth, ...) attends to all earlier tokens
    # (Gemma 2: 2); 0 = every layer has the window
    global_attention_every: int = 0
    attention_scale: float | None = None  # attention scores' factor; None = 1 / sqrt(head_dim)
    attention_softcap: float | None = None  # scores s capped to c tanh(s / c) (Gemma 2: 50)
    logit_softcap: float | None = None  # output logits capped likewise (Gemma 2: 30)
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0  # only the 'reference' attention backend supports it
    init_std: float = 0.02
    scaled_residual_init: bool = False  # GPT-2: residual projections init std / sqrt(2 * layers)
    type_vocab_size: int = 2  # bert: token type (segment A/B) embeddings
    heads: list[str] = field(default_factory=list)  # bert heads: mlm, nsp, classifier
    num_classes: int = 2  # bert classifier head
    attention_backend: str = "auto"  # auto | reference | jax | cudnn | pallas (TPU splash)
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 | float16
    param_dtype: str = "float32"  # parameter (master weight) dtype
    remat_policy: str = "none"  # none | full | dots | dots_no_batch
    scan_unroll: int = 1  # layers per iteration of the layer loop; 0 = all (no loop)

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.embed_dim // self.num_heads

    @property
    def resolved_rotary_dim(self) -> int:
        return self.rotary_dim or self.resolved_head_dim

    @property
    def full_attention_layers(self) -> tuple[bool, ...]:
        """Per decoder layer: whether it attends to all earlier tokens, not only the last
        `sliding_window` (every layer without a window; with one, every
        `global_attention_every`-th)."""
        every = self.global_attention_every
        return tuple(
            not self.sliding_window or (every > 0 and (i + 1) % every == 0)
            for i in range(self.num_layers)
        )

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.vocab_multiple) * self.vocab_multiple

    @property
    def decoder_layers(self) -> int:
        return self.num_decoder_layers or self.num_layers


@dataclass
class MeshConfig:
    """Device mesh shape; -1 takes all remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


@dataclass
class OptimConfig:
    """The optimizer (AdamW by default), its learning-rate schedule after a linear warmup from
    0 (cosine decay to min_lr_ratio * learning_rate by default) and gradient clipping."""

    # adamw | adafactor (factored second moments; b1, b2, eps unused, see adafactor_*) |
    # lion (sign of interpolated momenta; b1, b2) | sgd (momentum b1, 0 = none; b2, eps unused)
    optimizer: str = "adamw"
    # cosine | linear (both down to min_lr_ratio) | constant | rsqrt | wsd (constant, then
    # down to min_lr_ratio over the last cooldown_fraction of the steps)
    schedule: str = "cosine"
    learning_rate: float = 3e-4  # the peak, reached at the end of the warmup
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    cooldown_fraction: float = 0.2  # wsd: share of train.steps spent decaying
    weight_decay: float = 0.1  # decoupled (times the learning rate), on matrices only
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    adafactor_decay_rate: float = 0.8  # second moments decay by 1 - step^-adafactor_decay_rate
    adafactor_momentum: float = 0.0  # moving average of the updates (0 = none, no state)
    grad_clip: float = 1.0  # global norm; 0 disables clipping


@dataclass
class DataConfig:
    """Where examples come from (a source), what the model learns from them (a task), the
    sentencepiece tokenizer, and batch shapes."""

    source: str = "text"  # text | jsonl | tfds | tokens | vader | gettext (see jaxlm.data.sources)
    # causal_lm | completion (a GPT trained on the completions of prompts) | chat (a GPT trained
    # on the assistant's turns of conversations) | masked_lm | classification | seq2seq |
    # span_corruption
    task: str = "causal_lm"
    train_files: list[str] = field(default_factory=list)  # paths or globs the source reads
    document_unit: str = "file"  # text source: one document is a file | paragraph | line
    text_field: str = "text"  # jsonl / tfds: the text, source (seq2seq) or prompt (completion)
    label_field: str = "label"  # jsonl / tfds: the class label field (classification)
    target_field: str = "target"  # jsonl / tfds: the target (seq2seq) or completion field
    messages_field: str = "messages"  # jsonl: the conversation (chat): [{"role", "content"}, ...]
    labels: list[str] = field(default_factory=list)  # class names; [] = the labels found, sorted
    tfds_name: str = ""  # tfds source: a dataset name (with optional :version)
    tfds_data_dir: str = ""  # tfds source: where prepared datasets live ("" = TFDS default)
    tfds_split: str = "train"
    tfds_eval_split: str = ""  # "" = hold out eval_fraction of tfds_split
    max_examples: int = 0  # keep the first N examples of the source (0 = all)
    shuffle_seed: int | None = None  # shuffle the examples with this seed before max_examples
    eval_fraction: float = 0.05  # share of examples held out for evaluation
    eval_examples: int = 0  # hold out the last N examples instead (0 = use eval_fraction)
    # a sentencepiece model, or a Hugging Face tokenizer.json (its file, its directory or
    # package:<package>/<path>); "" = <workdir>/tokenizer.model, trained if absent
    tokenizer: str = ""
    tokenizer_type: str = "unigram"  # unigram | bpe (when training one)
    tokenizer_sample_lines: int = 200_000  # lines sampled to train the tokenizer
    seq_len: int = 128  # tokens per row (seq2seq, span_corruption: per source row)
    # seq2seq, span_corruption: tokens per target row; None = seq_len (seq2seq), or the longest
    # target of a source row (span_corruption)
    target_len: int | None = None
    batch_size: int = 32  # global batch, in rows
    shuffle_buffer: int = 1024  # rows
    mlm_probability: float = 0.15  # masked_lm: share of tokens predicted (80% mask/10%/10%)
    next_sentence: bool = True  # masked_lm: sentence pairs with a next-sentence label (50/50)
    noise_density: float = 0.15  # span_corruption: share of the tokens hidden from the encoder
    mean_noise_span: float = 3.0  # span_corruption: mean length of a hidden span, in tokens
    truncate: bool = True  # examples longer than a row: truncate (True) or skip (False); counted
    pack_completions: bool = False  # completion, chat: examples that follow each other share a row


@dataclass
class SampleConfig:
    """Text generation after training and for `jaxlm generate`."""

    __hash__ = _hash_by_value

    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 100
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 0  # 0 = no top-k filtering
    top_p: float = 1.0  # nucleus sampling; 1 = off
    repetition_penalty: float = 1.0  # > 1 discourages tokens already generated; 1 = off
    num_beams: int = 1  # > 1 = beam search (deterministic; ignores the sampling settings)
    length_penalty: float = 1.0  # beam scores are log-probability / length ** length_penalty
    early_stopping: bool = True  # beam search ends once num_beams hypotheses are finished
    # tokens besides EOS that end a row: an instruct model's end of turn (Gemma's <end_of_turn>,
    # Llama 3's <|eot_id|>); an imported model takes them from its generation_config.json
    stop_tokens: list[str] = field(default_factory=list)
    seed: int = 0


@dataclass
class TrainConfig:
    """The training loop: length, logging, evaluation and checkpoint cadence."""

    workdir: str = "runs/default"
    steps: int = 1000
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200  # evaluate every N steps and at the last one (0 = never)
    eval_batches: int = 20  # held-out batches per evaluation (0 = the whole eval split)
    eval_bleu: bool = False  # seq2seq: evaluations also translate their examples (eval_bleu)
    eval_bleu_beams: int = 1  # eval_bleu translates greedily (1) or by beam search with N beams
    checkpoint_every: int = 0  # 0 = only at the end (and when preempted)
    keep_checkpoints: int = 3  # the last N checkpoints are kept
    keep_best: int = 0  # also keep the N best by `best_metric` (saved at eval steps)
    best_metric: str = "eval_loss"  # an evaluation metric: eval_loss, eval_accuracy, eval_bleu...
    best_mode: str = "min"  # min: lower is better (loss); max: higher (accuracy, F1, BLEU)
    nan_policy: str = "stop"  # non-finite loss or gradient: stop (error) or skip the update
    progress_bar: bool = True
    microbatches: int = 1  # gradient accumulation: each step's batch is split into this many
    microbatch_unroll: int = 1  # microbatches per iteration of the accumulation loop; 0 = all
    label_smoothing: float = 0.0  # targets get this share of probability spread over the classes
    z_loss: float = 0.0  # adds z_loss * log(softmax normaliser)^2 per token (PaLM: 1e-4)
    # mixture of experts: the load-balancing loss's weight (Switch Transformer: 0.01) and the
    # router z-loss's, mean log(router softmax normaliser)^2 (ST-MoE: 0.001)
    router_aux_loss: float = 0.01
    router_z_loss: float = 0.0
    profile_steps: int = 0  # trace this many steps with the JAX profiler into <workdir>/profile
    profile_start: int = 3  # steps of the run before the trace starts (compilation is the first)


@dataclass
class DistributedConfig:
    """Multi-host runs: `jax.distributed.initialize` before anything else touches the devices.

    Unset values (empty, 0, -1) come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID, else from the cluster environment (Cloud TPU, Slurm, Open MPI, Kubernetes).
    """

    enabled: bool = False
    coordinator_address: str = ""  # host:port of process 0
    num_processes: int = 0
    process_id: int = -1
    timeout_seconds: int = 300  # how long to wait for every process to connect


@dataclass
class FinetuneConfig:
    """Start from pretrained weights and choose what trains (see `jaxlm.finetune`).

    Parameter patterns are globs over paths such as `encoder/layers/mlp/wi/kernel` (`*` also
    crosses `/`), or regular expressions after `re:`; a pattern naming a module selects all of it.
    A glob may take a range of a stack's layers: `'decoder/layers[8:]'`.
    """

    mode: str = "full"  # full | partial | prompt | prefix | lora
    # A Hugging Face model directory, a jaxlm workdir or checkpoint step directory, or
    # package:<package>/<path> inside an installed package; "" = random init
    init_from: str = ""
    # partial: the parameters that train; prompt / prefix / lora: those that train besides the
    # adapter (e.g. a new classifier head)
    trainable: list[str] = field(default_factory=list)
    prompt_length: int = 20  # prompt: soft-prompt vectors prepended to the embedded inputs
    prefix_length: int = 10  # prefix: key/value vectors prepended in every self-attention layer
    lora_rank: int = 8
    lora_alpha: float = 16.0  # the update A·B is scaled by lora_alpha / lora_rank
    lora_targets: list[str] = field(default_factory=lambda: ["*/query", "*/value"])  # kernels


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __repr__(self) -> str:
        """The keys that differ from the defaults, one per line (`to_yaml` gives them all)."""
        ours, defaults = dataclasses.asdict(self), dataclasses.asdict(Config())
        changed = [
            f"  {section}.{key}={value!r}"
            for section, values in ours.items()
            for key, value in values.items()
            if value != defaults[section][key]
        ]
        return "Config(\n" + "\n".join(changed) + "\n)" if changed else "Config()"
