"""Markdown tables (the paper's Table 2 layout) and plots from compare_settings' output."""

from __future__ import annotations

import io

METRIC_NAMES = {"f1_at_0.5": "F1 at 0.5", "f1_tuned": "F1 at val-tuned thresholds", "ap": "AP", "auroc": "AUROC"}
GROUPS = ("macro", "head", "tail")


def _cell(entry: dict | None, with_gain: bool) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    text = f"{entry['value']:.3f}"
    if with_gain and entry.get("gain") is not None:
        text += f" ({entry['gain']:+.3f})"
    return text


def table2(comparison: dict, tail: list[str], metric: str) -> str:
    """Classes as columns (tail classes marked *), settings as rows, gains over the baseline in
    brackets; seed means on the test split."""
    settings = comparison["settings"]
    classes = [c for c in next(iter(settings.values()))["classes"]]
    header = [f"{c}*" if c in tail else c for c in classes] + ["head mean", "tail mean", "macro mean"]
    lines = [f"| setting | {' | '.join(header)} |", "|---" * (len(header) + 1) + "|"]
    for name, row in settings.items():
        gain = name != comparison["baseline"]
        cells = [_cell(row["classes"][c][metric], gain) for c in classes]
        cells += [_cell(row["means"][g][metric], gain) for g in ("head", "tail", "macro")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _interval(ci: list[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "–"


def means_table(comparison: dict, metric: str) -> str:
    """Macro / head / tail means with 95% intervals, gains with paired intervals, seed SD."""
    lines = ["| setting | group | mean | 95% CI | gain | gain 95% CI | seed SD | gain seed SD |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in comparison["settings"].items():
        for group in GROUPS:
            e = row["means"][group][metric]
            if e is None:
                continue
            gain = f"{e['gain']:+.3f}" if e.get("gain") is not None else "–"
            sd = f"{e['seed_sd']:.3f}" if e.get("seed_sd") is not None else "–"
            gain_sd = f"{e['gain_seed_sd']:.3f}" if e.get("gain_seed_sd") is not None else "–"
            lines.append(f"| {name} | {group} | {e['value']:.3f} | {_interval(e['ci95'])} | {gain} | "
                         f"{_interval(e.get('gain_ci95'))} | {sd} | {gain_sd} |")
    return "\n".join(lines)


def gain_cell(entry: dict | None) -> str:
    """'+0.012 [0.002, 0.023]': a gain and its paired interval, or – where there is none."""
    if not entry or entry.get("gain") is None:
        return "–"
    return f"{entry['gain']:+.3f} {_interval(entry.get('gain_ci95'))}"


def gains_png(comparison: dict, title: str) -> bytes:
    """Gain over the baseline of the head and tail means, per metric and setting, with paired 95% CIs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in comparison["settings"] if s != comparison["baseline"]]
    metrics = list(METRIC_NAMES)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), sharey=False)
    width = 0.8 / len(settings)
    for ax, metric in zip(axes, metrics):
        for k, name in enumerate(settings):
            for g, group in enumerate(("head", "tail")):
                e = comparison["settings"][name]["means"][group][metric]
                if e is None or e.get("gain") is None:
                    continue
                x = g + (k - (len(settings) - 1) / 2) * width
                lo, hi = e["gain_ci95"] or (e["gain"], e["gain"])
                ax.bar(x, e["gain"], width, color=plt.get_cmap("tab20")(k % 20), label=name if g == 0 else None)
                ax.errorbar(x, e["gain"], yerr=[[e["gain"] - lo], [hi - e["gain"]]], color="black", capsize=2, lw=1)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xticks([0, 1], ["head mean", "tail mean"])
        ax.set_title(METRIC_NAMES[metric], fontsize=10)
    axes[0].set_ylabel("gain over baseline")
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title, fontsize=11)  # the legend sits right of the panels: inside, it hid the bars
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
