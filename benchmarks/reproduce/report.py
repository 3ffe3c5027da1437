"""results.jsonl -> docs/RESULTS.md, each row beside the paper's value.

    python benchmarks/reproduce/report.py [--results FILE] [--out docs/RESULTS.md]

Seeds of one row run in separate calls (one GPU call fits one 224 px run) are merged when they
share the schedule (epochs, batch, test-time views, training size), the newest entry of each seed
winning; a run of the same row on another schedule stays a line of its own, labelled with it.
CIFAR-10 per-class rows are also averaged per context.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from rows import ROWS  # noqa: E402


def _view_size(seed: dict) -> int | None:
    """The side of the training views; entries written before 2026-11-23 (seventh session) have no
    `view_size`: those runs made their views at --image-size, also when they cropped (256, not 224)."""
    return seed.get("view_size", seed.get("image_size"))


def _schedule(r: dict) -> tuple:
    first = r["seeds"][0] if r["seeds"] else {}
    return (r["epochs"], r["batch_size"], r.get("views"), r.get("objective"), first.get("image_size"),
            first.get("center_crop"), _view_size(first), r.get("amp"), r.get("width"), r.get("max_train_samples"))


def _label(row: str, sched: tuple, newest: tuple) -> str:
    """The row's name, plus what sets this schedule apart from the row's newest one."""
    if sched == newest:
        return row
    parts = [f"{sched[0]} epochs"] if sched[0] != newest[0] else []
    if sched[1] != newest[1]:
        parts.append(f"batch {sched[1]}")
    if sched[2] != newest[2]:
        parts.append(f"{sched[2]} test views")
    if sched[6] != newest[6]:
        parts.append(f"{sched[6]} px views")
    if sched[7] != newest[7]:
        parts.append("AMP" if sched[7] else "no AMP")
    if sched[8] != newest[8]:  # smoke tests (run.py --width / --max-train-samples); None: the paper's
        parts.append(f"width {sched[8] or 64}")
    if sched[9] != newest[9]:
        parts.append(f"{sched[9]} training samples" if sched[9] else "all training samples")
    return f"{row} ({', '.join(parts) or 'other settings'})"


def _summary(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
            "per_seed": [round(v, 2) for v in values]}


def merge(entries: list[dict]) -> dict:
    """One row from entries of the same row and schedule: the newest entry of each seed."""
    seeds: dict[int, tuple[dict, dict]] = {}
    for e in entries:
        for s in e["seeds"]:
            seeds[s["seed"]] = (s, e)
    order = sorted(seeds)
    merged = dict(entries[-1])
    merged["seeds"] = [seeds[k][0] for k in order]
    for scorer in ("nnd", "lh", "nnd_csi", "lh_csi"):  # the CSI-view columns exist since 2026-11-23
        if all(scorer in seeds[k][0] for k in order):
            merged[scorer] = _summary([100 * seeds[k][0][scorer] for k in order])
        else:
            merged.pop(scorer, None)
    merged["wall_s"] = sum({id(e): e["wall_s"] for _, e in seeds.values()}.values())
    merged["commit"] = ", ".join(dict.fromkeys(seeds[k][1]["commit"] for k in order))
    used = list({id(e): e for _, e in (seeds[k] for k in order)}.values())
    merged["device"] = ", ".join(dict.fromkeys(e["device"] for e in used))  # seeds may come from other GPUs
    merged["date"] = ", ".join(dict.fromkeys(e.get("date", "–") for e in used))
    if all("command" in e for e in used):  # one command per call that made some of the seeds
        merged["command"] = "`; `".join(dict.fromkeys(e["command"] for e in used))
        merged["launched_by"] = "`; `".join(dict.fromkeys(e.get("launched_by", "") for e in used if e.get("launched_by")))
    else:
        merged.pop("command", None)
    return merged


def load(path: Path) -> dict[str, dict]:
    """Row label -> merged row; the label is the row's name, plus its schedule when the row was
    also run on another one (the newest schedule keeps the plain name)."""
    groups: dict[tuple, list[dict]] = {}
    newest: dict[str, tuple] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                groups.setdefault((r["row"], _schedule(r)), []).append(r)
                newest[r["row"]] = _schedule(r)  # the schedule of the row's last line
    out: dict[str, dict] = {}
    for (row, sched), entries in groups.items():
        label = _label(row, sched, newest[row])
        while label in out:  # settings the label does not name: never one row over another
            label += " (other settings)"
        out[label] = merge(entries)
    return out


def _command(r: dict) -> str:
    """The recorded command (and the device_job.py call that launched it), else a reconstruction."""
    if "command" in r:
        launched = f" (launched by `{r['launched_by']}`)" if r.get("launched_by") else ""
        return f"`{r['command']}`{launched}"
    return (f"`python benchmarks/reproduce/run.py {r['row']} --data-root .carry/data --seeds "
            f"{' '.join(str(s['seed']) for s in r['seeds'])} --epochs {r['epochs']}` (reconstructed)")


def fmt(d: dict) -> str:
    if len(d.get("per_seed", [])) == 1:  # no spread to report from one seed
        return f"{d['mean']:.1f} (1 seed)"
    return f"{d['mean']:.1f} ± {d['std']:.1f}"


def render(results: dict[str, dict]) -> str:
    out = ["# Reproduction of the paper's results", "",
           "Generated by `python benchmarks/reproduce/report.py` from `benchmarks/reproduce/results.jsonl`;",
           "each row's last column is the command that made it (run on the lent GPU machine), as recorded",
           "since 2026-11-23 (eighth session); for older rows, marked \"reconstructed\", the `run.py` command",
           "of the row's schedule: today's code runs it with today's views (224 px where a row says 256 px views).",
           "AUROC % mean ± std over seeds; the paper's values are S_NND unless the row says LH. S_NND and S_LH",
           "use the test-time views of METHOD §7 (the training views); the CSI-views columns score the same",
           "models with CSI's evaluation crops (54 % of the area), reported beside them, not chosen (– where a",
           "row ran before they existed).", "",
           "| row | objective | schedule (epochs × batch) | S_NND | S_LH | paper | Δ (our − paper) | seeds (NND) | "
           "S_NND, CSI views | S_LH, CSI views | wall | views/s | device | commit | date | command |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ours = r[r.get("paper_scorer", "nnd")]["mean"]
        delta = f"{ours - r['paper']:+.1f}" if r.get("paper") is not None else "–"
        cmd = _command(r)
        paper = "–" if r.get("paper") is None else f"{r['paper']}" + (" (LH)" if r.get("paper_scorer") == "lh" else "")
        view = _view_size(r["seeds"][0]) if r["seeds"] else None
        sched = f"{r['epochs']} × {r['batch_size']}" + (f", {view} px views" if view else "")
        out.append(f"| {name} | {r['objective']} | {sched} | {fmt(r['nnd'])} | {fmt(r['lh'])} | "
                   f"{paper} | {delta} | {', '.join(f'{v:.1f}' for v in r['nnd']['per_seed'])} | "
                   f"{fmt(r['nnd_csi']) if 'nnd_csi' in r else '–'} | {fmt(r['lh_csi']) if 'lh_csi' in r else '–'} | "
                   f"{r['wall_s']:.0f} s | "
                   f"{statistics.median(s['views_per_s'] for s in r['seeds']):.0f} | {r['device']} | {r['commit']} | {r.get('date', '–')} | {cmd} |")
    cifar = {}
    for name, r in results.items():
        if name.startswith("cifar10-") and name == r["row"]:
            cifar.setdefault(r["context"], []).append(r)
    if cifar:
        out += ["", "## CIFAR-10 one-class, mean over the classes run", "",
                "| context | classes run | S_NND mean | S_LH mean | paper S_NND | paper S_LH |", "|---|---|---|---|---|---|"]
        for ctx, rs in cifar.items():
            out.append(f"| {ctx} | {len(rs)} | {statistics.mean(r['nnd']['mean'] for r in rs):.1f} | "
                       f"{statistics.mean(r['lh']['mean'] for r in rs):.1f} | {rs[0]['extra'].get('paper_mean')} | "
                       f"{rs[0]['extra'].get('paper_mean_lh')} |")
    notes = HERE / "NOTES.md"
    if notes.exists():
        out += ["", notes.read_text().rstrip()]
    done = {r["row"] for r in results.values()}
    missing = [n for n in ROWS if n not in done]
    if missing:
        out += ["", "## Not run yet", "", ", ".join(f"`{n}`" for n in missing)]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--results", default=str(HERE / "results.jsonl"))
    p.add_argument("--out", default=str(HERE.parents[1] / "docs" / "RESULTS.md"))
    a = p.parse_args(argv)
    text = render(load(Path(a.results)))
    Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
