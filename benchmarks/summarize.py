"""Markdown tables and a tokens/s-against-size plot from the JSON reports of `jaxlm bench`.

    python benchmarks/summarize.py OUTDIR   # reads OUTDIR/train-*.json and OUTDIR/decode.json

Prints the tables (for benchmarks/RESULTS.md) and writes OUTDIR/sizes.png when there are train
reports: tokens/s and MFU against the model's arithmetic parameters N (jaxlm.bench.flops), one
line per framework (the PyTorch reference too, for reports of `--reference torch` runs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from matplotlib.figure import Figure


def train_table(reports: list[dict]) -> list[str]:
    """One row per framework of each report (jaxlm, and the reference when it ran)."""
    lines = [
        "| config | framework | N (arithmetic params) | batch x seq | remat | step ms (median) "
        "| tokens/s | MFU | peak memory | compile s |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for report in reports:
        for r in report["results"]:
            mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            compile_s = "-" if r["compile_seconds"] is None else f"{r['compile_seconds']:.1f}"
            lines.append(
                f"| {report['config'].split()[0]} | {r['name']} "
                f"| {report['arithmetic_params'] / 1e6:,.1f} M "
                f"| {report['batch_size']} x {report['seq_len']} "
                f"| {report['model']['remat_policy']} "
                f"| {1e3 * r['step_seconds_median']:.1f} | {r['tokens_per_second']:,.0f} | {mfu} "
                f"| {r['memory_bytes'] / 2**30:.1f} GiB ({r['memory_kind']}) | {compile_s} |"
            )
    return lines


def decode_table(report: dict) -> list[str]:
    m = report["model"]
    lines = [
        f"Greedy decoding, {m['layers']} layers x {m['embed_dim']}, compute {m['dtype']}, "
        f"weights {m['param_dtype']}; prompt {report['prompt_len']}, {report['new_tokens']} new "
        "tokens; ms/token = (T_N - T_1) / (N - 1):",
        "",
        "| batch | ms/token | tokens/s | T_1 ms | compile s |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['batch']} | {1e3 * r['latency_s']:.3f} | {r['tokens_per_second']:,.0f} "
            f"| {1e3 * r['first_token_s']:.1f} | {r['compile_s']:.1f} |"
        )
    return lines


def operations_table(report: dict) -> list[str]:
    """The costliest XLA operations of a report's traced steps (`jaxlm bench --profile`)."""
    profile = report["profile"]
    lines = [
        f"Operations of {report['config'].split()[0]} by time, over {profile['steps']} traced "
        "steps:",
        "",
        "| operation | ms/step | share | runs/step |",
        "| --- | ---: | ---: | ---: |",
    ]
    for op in profile["top_operations"]:
        lines.append(
            f"| `{op['op']}` | {op['ms_per_step']:.2f} | {100 * op['share']:.1f}% | {op['count']} |"
        )
    return lines


def plot_sizes(reports: list[dict], path: Path) -> None:
    """Tokens/s and MFU against N, one line per framework."""
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    speed, utilization = figure.subplots(1, 2)
    names = dict.fromkeys(r["name"] for report in reports for r in report["results"])
    for name in names:
        points = [
            (report["arithmetic_params"] / 1e6, r)
            for report in reports
            for r in report["results"]
            if r["name"] == name
        ]
        params = [n for n, _ in points]
        speed.plot(params, [r["tokens_per_second"] for _, r in points], "o-", label=name)
        if all(r["mfu"] is not None for _, r in points):
            utilization.plot(params, [100 * r["mfu"] for _, r in points], "o-", label=name)
    speed.set(xlabel="arithmetic parameters N (millions)", ylabel="training tokens/s", yscale="log")
    utilization.set(xlabel="arithmetic parameters N (millions)", ylabel="MFU (%)")
    for axes in (speed, utilization):
        axes.set_xscale("log")
        axes.grid(alpha=0.3)
        if len(names) > 1:
            axes.legend()
    machine = reports[0]["machine"]
    device = machine["cpu"] if machine["platform"] == "cpu" else machine["device_kind"]
    figure.suptitle(f"train step, {device}, {reports[0]['model']['dtype']}")
    figure.savefig(path, dpi=120)


def main(out: Path) -> None:
    train = [json.loads(p.read_text()) for p in sorted(out.glob("train-*.json"))]
    train.sort(key=lambda report: report["arithmetic_params"])
    lines = []
    if train:
        info = train[0]["machine"]
        lines += [
            f"{info['devices']} x {info['device_kind']} ({info['platform']}), {info['date']}; "
            + ", ".join(f"{name} {version}" for name, version in info["versions"].items()),
            f"XLA_FLAGS: `{info['xla_flags'] or '-'}`",
            f"MFU: {train[0]['flops_convention']}, over {train[0]['peak']['source']}",
            "",
            *train_table(train),
            "",
        ]
        for report in train:
            if "profile" in report:
                lines += [*operations_table(report), ""]
        plot_sizes(train, out / "sizes.png")
    decode = out / "decode.json"
    if decode.exists():
        lines += decode_table(json.loads(decode.read_text()))
    if not lines:
        sys.exit(f"summarize.py: no train-*.json or decode.json in {out}")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/summarize.py OUTDIR")
    main(Path(sys.argv[1]))
