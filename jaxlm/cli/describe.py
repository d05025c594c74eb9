"""`jaxlm describe MODEL_OR_CONFIG [section.key=value ...] [--params] [--mesh AXIS=SIZE,...]`."""

from __future__ import annotations


def run(args) -> None:
    from jaxlm.config import load_config
    from jaxlm.models.summary import abstract_params, count_parameters, parameter_table
    from jaxlm.sharding_report import abstract_mesh, parse_mesh, sharding_report

    cfg = load_config(args.config, args.overrides)
    report = None
    if args.mesh is not None:  # first, so that a mesh that does not fit fails before any output
        report = sharding_report(cfg, abstract_mesh(parse_mesh(args.mesh)))
    m = cfg.model
    print(f"model: {args.config} ({m.family})")
    print(
        f"  layers {m.num_layers}"
        + (f" + {m.decoder_layers} decoder" if m.family == "seq2seq" else "")
        + f", embed {m.embed_dim}, heads {m.num_heads} x {m.resolved_head_dim}"
        + (f" (kv heads {m.num_kv_heads})" if m.num_kv_heads else "")
        + (", query/key/value biases" if m.qkv_bias and not m.use_bias else "")
        + (", no attention biases" if m.use_bias and m.attention_bias is False else "")
        + (f", queries/keys/values clipped at {m.clip_qkv:g}" if m.clip_qkv else "")
        + (", query/key norms" if m.qk_norm else "")
        + (" over all heads" if m.qk_norm and m.qk_norm_scope == "heads" else "")
        + (", a scale per head" if m.qk_norm and m.qk_norm_scope == "each_head" else "")
        + (f", sliding window {m.sliding_window}" if m.sliding_window else "")
        + (
            f" (full attention every {m.global_attention_every} layers)"
            if m.global_attention_every
            else ""
        )
        + (f", scores x{m.attention_scale:g}" if m.attention_scale else "")
        + (f", scores capped at {m.attention_softcap:g}" if m.attention_softcap else "")
        + f", mlp {m.mlp_dim} ({m.activation})"
        + (f" x {m.num_experts} experts, {m.experts_per_token} a token" if m.num_experts else "")
        + f", {m.norm_position}-{m.norm}"
        + (" (scales 1 + weight)" if m.norm_unit_offset else "")
        + _unlearned(m)
        + (", embeddings normalized" if m.embed_norm else "")
        + (f", {m.block_layout.replace('_', ' ')} blocks" if m.block_layout != "sequential" else "")
    )
    positions = m.position_embedding
    if positions == "rotary":
        positions += (
            f" (base {m.rope_base:g}"
            + (f", {m.rotary_dim} of {m.resolved_head_dim} features" if m.rotary_dim else "")
            + (f", sliding layers' {m.rope_local_base:g}" if m.rope_local_base else "")
            + (
                f", {m.rope_scaling} scaling x{m.rope_scaling_factor:g})"
                if m.rope_scaling != "none"
                else ")"
            )
        )
    print(
        f"  vocab {m.vocab_size} (padded to {m.padded_vocab_size}), max length {m.max_len}, "
        f"{positions} positions, tied embeddings: {m.tie_embeddings}"
        + (f", heads: {', '.join(m.heads) or 'none'}" if m.family == "bert" else "")
        + (f", logits capped at {m.logit_softcap:g}" if m.logit_softcap else "")
    )
    print(f"  compute {m.dtype}, params {m.param_dtype}, remat {m.remat_policy}")
    boxed = abstract_params(m)
    print(parameter_table(m, boxed) if args.params else f"parameters: {count_parameters(m, boxed)}")
    if report is not None:
        print(report)


def _unlearned(m) -> str:
    """What the norms lack of the usual learned parameters."""
    if not m.norm_scale:
        return " without learned parameters"
    return " without biases" if m.norm == "layernorm" and not m.norm_bias else ""


def register(commands) -> None:
    parser = commands.add_parser("describe", help="print a model's architecture and size")
    parser.add_argument("config", help="a preset name (gpt2-small, bert-base, ...) or YAML file")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument("--params", action="store_true", help="list every parameter")
    parser.add_argument(
        "--mesh",
        metavar="AXIS=SIZE,...",
        help="also show how parameters and optimizer state split over a mesh of this shape "
        "(axes data, fsdp, tensor; no devices needed), e.g. data=2,fsdp=2,tensor=2",
    )
    parser.set_defaults(run=run)
