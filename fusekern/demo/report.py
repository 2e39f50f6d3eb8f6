"""The demo's outputs for people: a table on stdout and a PNG (bar chart + training curves)."""

from __future__ import annotations

from fusekern.demo.results import COLUMNS, RUNS, VARIANTS


def print_table(results: dict) -> None:
    ppl, bpb = results["held_out_ppl"], results["held_out_bpb"]
    rows = [*results["held_out_ppl"]["sources"], *VARIANTS]
    print("\nHeld-out bits per byte (all models) and perplexity (target variants, one tokenizer):")
    head = "".join(f"{'bpb ' + c:>14}" for c in COLUMNS) + "".join(f"{'ppl ' + c:>14}" for c in COLUMNS)
    print(f"{'model':<16}{head}")
    for name in rows:
        line = "".join(f"{bpb['by_domain'][name][c]:>14.4f}" for c in COLUMNS)
        if name in VARIANTS:
            line += "".join(f"{ppl['by_domain'][name][c]:>14.2f}" for c in COLUMNS)
        print(f"{name:<16}{line}")
    cmp = results["fused_vs_clm_baseline"]
    change = (
        f"overall bpb {cmp['bpb_change_percent']:+.2f}%, ppl {cmp['ppl_change_percent']:+.2f}% "
        f"(validation bpb {cmp['validation_bpb_change_percent']:+.2f}%)"
    )
    if results["config"].get("size") == "tiny":
        # toy sizes: a few steps of 32-wide models; the sign of the difference is noise
        print(f"\n--size tiny (every stage at toy size, numbers mean nothing): fused vs control {change}")
    else:
        verdict = "beats" if cmp["fused_better"] else "does NOT beat"
        print(
            f"\nfused ({results['config']['positions']} positions) {verdict} the CLM-only control: {change}"
        )
    print(f"({results['seconds']:.0f}s in total)\n")


def _curve(history: list, key: str) -> tuple:
    pts = [(h["step"], h[key]) for h in history if key in h]
    return [s for s, _ in pts], [v for _, v in pts]


def run_colors(names: list) -> dict:
    """One colour per run, the same in every panel: the two target runs get fixed colours
    (control grey, fused red), the other models the remaining tab10 colours in order."""
    import matplotlib

    fixed = {"clm_baseline": "tab:gray", "fused": "tab:red"}
    palette = [
        c
        for c in matplotlib.colormaps["tab10"].colors
        if c not in (matplotlib.colors.to_rgb("tab:gray"), matplotlib.colors.to_rgb("tab:red"))
    ]
    out, free = {}, iter(palette)
    for name in names:
        out[name] = fixed.get(name) or next(free)
    return out


def plot(results: dict, run_dirs: dict, path: str) -> str:
    """Bar chart of held-out bpb per domain (every model) and the two target runs' curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bpb = results["held_out_bpb"]["by_domain"]
    names = [*results["held_out_bpb"]["sources"], *VARIANTS]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(names)
    color = run_colors(names)
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(COLUMNS))]
        vals = [bpb[name][c] for c in COLUMNS]
        ax1.bar(xs, vals, width, label=name, color=color[name])
        for x, v in zip(xs, vals):
            ax1.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax1.set_xticks(range(len(COLUMNS)))
    ax1.set_xticklabels(COLUMNS)
    # the axis starts near the smallest value (labelled below) so that small differences show
    low = min(bpb[n][c] for n in names for c in COLUMNS)
    high = max(bpb[n][c] for n in names for c in COLUMNS)
    ax1.set_ylim(0.9 * low, high + 0.08 * (high - 0.9 * low))
    ax1.set_ylabel(f"held-out bits per byte, lower is better (axis from {0.9 * low:.2f})")
    ax1.set_title("Held-out bits per byte")
    ax1.legend(fontsize=7, ncol=len(names), loc="upper center", bbox_to_anchor=(0.5, -0.07), frameon=False)

    logs = results.get("train_log_history", {})
    for variant in RUNS:
        hist = logs.get(variant, [])
        s, v = _curve(hist, "eval_loss")
        if s:
            ax2.plot(
                s,
                v,
                "-o",
                color=color[variant],
                label=f"{variant}: held-out loss (Trainer eval)",
                markersize=3,
            )
        s, v = _curve(hist, "clm_loss")
        if s:
            ax2.plot(s, v, "--", color=color[variant], alpha=0.6, label=f"{variant}: train CLM loss")
    ax2.set_xlabel("step")
    ax2.set_ylabel("nats / token (target tokenizer)")
    ax2.set_title("Continual training of the target")
    ax2.legend(fontsize=7)
    cmp, c = results["fused_vs_clm_baseline"], results["config"]
    fig.suptitle(
        f"fusekern demo: fused vs CLM-only control, overall bpb {cmp['bpb_change_percent']:+.2f}% "
        f"({c['positions']} positions, λ={c['lm_weight']}, T={c['teacher_temperature']}, "
        f"{c['fusion_method']})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
