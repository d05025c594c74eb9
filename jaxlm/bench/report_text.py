"""`jaxlm bench`'s training report (`jaxlm.bench.harness.run_benchmark`) as a short text table."""

from __future__ import annotations

from jaxlm.bench.trace_summary import operation_line


def _bytes(count: int | None) -> str:
    return "-" if count is None else f"{count / 2**20:,.0f} MiB"


def format_report(report: dict) -> str:
    """The report as a short text table."""
    m, info, peak = report["model"], report["machine"], report["peak"]
    load = report["load_average"]
    lines = [
        f"config {report['config'] or '-'}: gpt {m['layers']} layers x {m['embed_dim']}, "
        f"{m['heads']} heads, mlp {m['mlp_dim']}, vocab {m['vocab_size']}, {m['dtype']}; "
        f"batch {report['batch_size']} x {report['seq_len']} = {report['tokens_per_step']:,} "
        "tokens per step",
        f"device: {info['devices']} x {info['device_kind']} ({info['platform']}); CPU "
        f"{info['cpu']}, {info['cpu_threads']} threads; load average {load['start']:.2f} at "
        f"start, {load['end']:.2f} at end",
        f"model FLOPs per token: {report['flops_per_token'] / 1e6:.2f} M "
        f"(6N + 12LHQT, N = {report['arithmetic_params'] / 1e6:.2f} M)",
        "peak: "
        + (
            f"{peak['flops_per_second'] / 1e9:,.1f} GFLOP/s ({peak['source']})"
            if peak["flops_per_second"]
            else peak["source"]
        ),
        "",
        f"{'':<10}{'compile s':>10}{'median ms':>11}{'p90 ms':>9}{'min ms':>9}{'CPU ms':>8}"
        f"{'tokens/s':>10}"
        f"{'GFLOP/s':>9}{'MFU':>7}{'faults':>9}  memory",
    ]
    for r in report["results"]:
        compile_s = "-" if r["compile_seconds"] is None else f"{r['compile_seconds']:.2f}"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        memory = f"{_bytes(r['memory_bytes'])} {r['memory_kind']}"
        if r["compiled_step_bytes"] is not None:
            memory += f" (compiled step {_bytes(r['compiled_step_bytes'])})"
        lines.append(
            f"{r['name']:<10}{compile_s:>10}{1e3 * r['step_seconds_median']:>11.1f}"
            f"{1e3 * r['step_seconds_p90']:>9.1f}{1e3 * r['step_seconds_min']:>9.1f}"
            f"{1e3 * r['cpu_seconds_per_step']:>8.0f}"
            f"{r['tokens_per_second']:>10,.0f}"
            f"{r['model_flops_per_second'] / 1e9:>9.1f}{mfu:>7}"
            f"{r['page_faults_per_step']:>9,.0f}  {memory}"
        )
    lines.append(
        "(CPU ms: process CPU time per step, all threads; faults: minor page faults per step; "
        "warm-up steps: "
        + ", ".join(f"{r['name']} {r['warmup_steps']}" for r in report["results"])
        + ")"
    )
    if "speedup_vs_reference" in report:
        lines.append(
            f"jaxlm / pytorch tokens/s: {report['speedup_vs_reference']:.2f} (median steps); "
            f"{report['speedup_fastest_steps']:.2f} (fastest steps)"
        )
    shown = 8
    lines.append("")
    lines.append(f"loss over the first {shown} steps (same initial weights, same batch):")
    for r in report["results"]:
        lines.append(f"  {r['name']:<8}" + " ".join(f"{x:.4f}" for x in r["losses"][:shown]))
    if "profile" in report:
        profile = report["profile"]
        lines += ["", f"operations taking the most time ({profile['folder']}):"]
        lines += [f"  {operation_line(op)}" for op in profile["top_operations"]]
    return "\n".join(lines)
