"""Issue 33's regime map: in which phantom worlds does generated data beat the best long-tail loss
and its own controls? It reads the saved phantom runs of one size in a folder (the default regime,
``experiment_phantom.json``, and every ``--regime`` run, ``experiment_phantom-<regime>.json``;
benchmarks/experiment.py makes them) and tabulates, per regime, the method against the strongest
long-tail baseline and against each control, on tail F1 and tail AUROC with paired 95% intervals,
and head F1.

A setting "wins" a comparison when both tail gains have intervals above 0 and head F1 drops by at
most ``HEAD_DROP`` (the issue's terms).

    python -m benchmarks.experiment --part phantom --phantom-test-n 9000 --seeds 0 \\
        --regime tail_contrast=0.5,tail_with_head=0.9 --settings cb +inpainting+cb +copies+cb --out DIR
    python -m benchmarks.regime_map --runs DIR [DIR ...] --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import RESULTS
from benchmarks.tables import gain_cell

METHOD = "+inpainting+cb"
HEAD_DROP = 0.01
GROUP_METRICS = (("tail", "f1_tuned"), ("tail", "auroc"), ("head", "f1_tuned"))


def verdict(means: dict) -> dict:
    """The gains of one comparison (``compare_settings`` means of the method) and whether it wins."""
    gains = {f"{group} {metric}": means[group][metric] for group, metric in GROUP_METRICS}
    tail_up = all((gains[k].get("gain_ci95") or [0])[0] > 0 for k in ("tail f1_tuned", "tail auroc"))
    head_kept = gains["head f1_tuned"]["gain"] >= -HEAD_DROP
    return {"gains": {k: {"gain": e["gain"], "gain_ci95": e.get("gain_ci95")} for k, e in gains.items()},
            "wins": bool(tail_up and head_kept)}


def regime_row(payload: dict, method: str = METHOD) -> dict | None:
    """One saved run's row of the map, or None when it has no ``method``."""
    best = payload.get("versus_best_longtail")
    if not best or method not in best["comparison"]["settings"]:
        return None
    against = {best["baseline"]: verdict(best["comparison"]["settings"][method]["means"])}
    controls = payload.get("versus_controls", {}).get(method, {})
    against |= {control: verdict(means) for control, means in controls.items()}
    regime = payload["data"].get("regime") or default_regime(payload["dataset"])
    settings = payload["comparison"]["settings"]
    tail = {name: {metric: settings[name]["means"]["tail"][metric]["value"] for metric in ("f1_tuned", "auroc")}
            for name in settings}  # every setting's tail means: which one a user should run here
    return {"regime": regime, "seeds": payload["config"]["seeds"], "commit": payload["commit"],
            "baseline": best["baseline"], "against": against, "wins_all": all(v["wins"] for v in against.values()),
            "tail": tail}


def default_regime(dataset: str) -> dict:
    """The default regime's settings, with its measured share of tail films beside a head finding
    when its dataset is on this machine (runs made before regimes did not record it)."""
    from benchmarks.experiment import regime_facts
    from tasks.phantom import Regime

    return regime_facts(dataset, Regime()) if Path(dataset).exists() else {"tail_contrast": 1.0,
                                                                          "tail_with_head": None}


def build(folders: list[Path], part: str = "phantom") -> list[dict]:
    files = sorted({f for folder in folders for f in folder.glob(f"experiment_{part}*.json")
                    if f.stem == f"experiment_{part}" or f.stem.startswith(f"experiment_{part}-")})
    rows = []
    for path in files:
        row = regime_row(json.loads(path.read_text()))
        if row:
            rows.append({"file": path.name, **row})
    return rows


def markdown(rows: list[dict], part: str) -> str:
    lines = [f"# Where generated data helps: the {part} regime map", "",
             f"`{METHOD}` per regime against the strongest long-tail baseline and its controls: paired gains "
             "with 95% intervals (tail F1 at val-tuned thresholds, tail AUROC, head F1). It wins a comparison when "
             f"both tail intervals are above 0 and head F1 drops by at most {HEAD_DROP}. `tail_with_head`: the share "
             "of tail-positive train films that also show a head finding (the regime's setting, else as drawn).", "",
             "| regime | seeds | against | tail F1 | tail AUROC | head F1 | wins |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        name = _name(row["regime"], films=True)
        for control, v in row["against"].items():
            g = v["gains"]
            lines.append(f"| {name} | {row['seeds']} | {control} | {gain_cell(g['tail f1_tuned'])} | "
                         f"{gain_cell(g['tail auroc'])} | {gain_cell(g['head f1_tuned'])} | "
                         f"{'yes' if v['wins'] else 'no'} |")
    lines += ["", "Every setting's tail means per regime (the best of each column in bold; test split, seed means):",
              "", "| regime | setting | tail F1 | tail AUROC |", "|---|---|---|---|"]
    for row in rows:
        best = {m: max(v[m] for v in row["tail"].values()) for m in ("f1_tuned", "auroc")}
        for setting, v in row["tail"].items():
            cells = [f"**{v[m]:.3f}**" if v[m] == best[m] else f"{v[m]:.3f}" for m in ("f1_tuned", "auroc")]
            lines.append(f"| {_name(row['regime'])} | {setting} | {cells[0]} | {cells[1]} |")
    lines += ["", "Runs: " + ", ".join(f"`{r['file']}` (commit `{r['commit']}`)" for r in rows)]
    return "\n".join(lines) + "\n"


def _name(regime: dict, films: bool = False) -> str:
    drawn = regime.get("train_tail_films_with_head")
    return (f"contrast {regime['tail_contrast']:g}, with head "
            f"{regime['tail_with_head'] if regime['tail_with_head'] is not None else 'as drawn'}"
            + (f" ({drawn:.2f} of {regime['train_tail_films']} train tail films)" if films and drawn is not None
               else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="folders holding experiment_<part>*.json")
    parser.add_argument("--part", default="phantom")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = build(args.runs, args.part)
    if not rows:
        raise SystemExit(f"no saved {args.part} run with {METHOD} in {', '.join(map(str, args.runs))}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"regime_map_{args.part}.json").write_text(json.dumps({"method": METHOD, "rows": rows}, indent=2))
    (args.out / f"regime_map_{args.part}.md").write_text(markdown(rows, args.part))
    print(f"{len(rows)} regimes: {args.out}/regime_map_{args.part}.{{json,md}}")


if __name__ == "__main__":
    main()
