"""Render the allocation study (benchmarks/study.py) from its committed results file: docs/study.md
and the figure docs/img/study_ppl.png. A pure renderer (JSON in, page out, no model), so a partial
file renders at any time and the page re-renders with one command:

    python benchmarks/study_report.py          # benchmarks/results/study.json -> docs/study.md

Every number and sentence of the page is computed from the rows; a configuration that is not in
the file is shown as "not run". `--schedule auto`'s row per (ratio, seed) is derived from its three
candidate rows (lowest calibration loss, ties to the smaller t), which is the choice
pipeline.choose_plan makes on the same windows; the one end-to-end `auto` row checks that.
"Beyond the seed spread" means the worst seed of one configuration is better than the best seed of
the other, both with at least two seeds.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

RESULTS = Path("benchmarks/results/study.json")
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
# the auto schedule's candidates t (slimgpt/autoschedule.py BLENDS) and the study rows that prune them
CANDIDATES = {0.0: "slimgpt", 0.5: "auto/t0.5", 1.0: "slimgpt/flap-plan"}
AUTO = "auto"                           # derived from the candidates; the variant "auto" is the end-to-end run
SCHEDULES = (("slimgpt", "log (paper)"), ("slimgpt/flap-plan", "FLAP's counts (t = 1)"),
             ("auto/t0.5", "blend t = 0.5"), (AUTO, "**auto** (derived)"))
PROTOCOLS = (("ppl128", "PPL@128"), ("ppl2048", "PPL@2048"))
TARGETS = ((0.2, 1.6), (0.5, 5.0))      # issue 21: PPL@2048 ≤ factor × dense, without fine-tuning
ALIGN = {"slimgpt/align32": "--align 32", "slimgpt/align32-ffn": "--align 32 --align-ffn-only"}
ALIGN_RATIOS = (0.2, 0.5)
NOT_RUN = "not run"


def load(path: Path) -> dict:
    """The results file, or an empty one."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {"settings": {}, "results": {}}


# ----------------------------------------------------------------------------------------------
# Rows and their aggregates

def gmean(xs):
    xs = [x for x in xs if x is not None]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def amean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def by_seed(results: dict, variant: str, ratio: float) -> dict:
    """seed -> row of one (variant, ratio)."""
    return {r.get("seed", 0): r for r in results.values()
            if r.get("variant") == variant and math.isclose(float(r.get("ratio", 0)), ratio)}


def derive_auto(results: dict, ratio: float) -> dict:
    """seed -> {"t", "row", "cost_s"}: the candidate with the lowest calibration loss (ties: the
    smaller t), only for seeds where every candidate row exists with its loss."""
    cands = {t: by_seed(results, v, ratio) for t, v in CANDIDATES.items()}
    out = {}
    for seed in sorted(set.intersection(*(set(c) for c in cands.values()))):
        rows = {t: cands[t][seed] for t in sorted(cands)}
        if any(r.get("calibration_loss") is None for r in rows.values()):
            continue
        t = min(rows, key=lambda t: (rows[t]["calibration_loss"], t))
        prunes = [r.get("prune_s") for r in rows.values()]
        cost = None if None in prunes else sum(prunes) + rows[t]["prune_s"]
        out[seed] = {"t": t, "row": rows[t], "cost_s": cost}
    return out


def series(results: dict, variant: str, ratio: float) -> dict:
    """seed -> row for a study variant, or for the derived auto (its chosen candidate's row)."""
    if variant == AUTO:
        return {s: d["row"] for s, d in derive_auto(results, ratio).items()}
    return by_seed(results, variant, ratio)


def values(rows: dict, field: str, seeds=None) -> list:
    return [r[field] for s, r in sorted(rows.items()) if (seeds is None or s in seeds) and r.get(field) is not None]


def fmt(x, nd=2):
    if x is None:
        return "—"
    if math.isinf(x) or math.isnan(x):
        return str(x)
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{nd}f}"


def tfmt(t: float) -> str:
    return f"{t:g}"


def cell(rows: dict, field: str) -> str:
    v = values(rows, field)
    if not v:
        return NOT_RUN
    return fmt(gmean(v)) + (f" [{fmt(min(v))}–{fmt(max(v))}]" if len(v) > 1 else "")


def pct(a, b) -> str:
    d = 100 * (a - b) / b
    return "±0.0%" if abs(d) < 0.05 else f"{d:+.1f}%"


# ----------------------------------------------------------------------------------------------
# Sections

def settings_lines(st: dict) -> list[str]:
    if not st:
        return ["Settings: not recorded (no row has run)."]
    names = {"model": "Model", "calibration": "Calibration", "percdamp": "Damping (percdamp)",
             "ppl128": "PPL@128", "ppl2048": "PPL@2048", "torch": "torch", "threads": "torch threads",
             "cpus": "CPU cores (shared with other jobs: times are wall clock, indicative only)",
             "machine": "Machine"}
    return [f"- {names[k]}: {v}" for k, v in st.items() if k in names]


def allocation_table(res: dict, dense2048) -> list[str]:
    out = ["| ratio | schedule | seeds | PPL@128 mean [min–max] | PPL@2048 mean [min–max] | @2048 × dense | "
           "auto's t per seed | prune s (mean) |", "|---|---|---|---|---|---|---|---|"]
    for r in RATIOS:
        derived = derive_auto(res, r)
        for v, label in SCHEDULES:
            rows = series(res, v, r)
            if not rows:
                out.append(f"| {r:.0%} | {label} | — | {NOT_RUN} | {NOT_RUN} | — | — | — |")
                continue
            m = gmean(values(rows, "ppl2048"))
            x = fmt(m / dense2048) if m and dense2048 else "—"
            if v == AUTO:
                ts = ", ".join(f"s{s}: {tfmt(d['t'])}" for s, d in derived.items())
                cost = amean([d["cost_s"] for d in derived.values()])
                prune = f"≈ {fmt(cost, 0)} (est.)" if cost is not None else "—"
            else:
                ts, prune = "—", fmt(amean(values(rows, "prune_s")), 0)
            out.append(f"| {r:.0%} | {label} | {','.join(map(str, sorted(rows)))} | {cell(rows, 'ppl128')} | "
                       f"{cell(rows, 'ppl2048')} | {x} | {ts} | {prune} |")
    return out


def run_t(row: dict):
    """The t the end-to-end auto run chose (its schedule_search record)."""
    search = row.get("schedule_search") or {}
    return search.get("t")


def check_lines(res: dict) -> list[str]:
    """The end-to-end `auto` rows beside their derived twins."""
    runs = [r for r in res.values() if r.get("variant") == "auto"]
    if not runs:
        return [f"The end-to-end check (`{AUTO}` run by the CLI's path): {NOT_RUN}."]
    out = ["| ratio | seed | derived: t, PPL@128, PPL@2048 | end to end: t, PPL@128, PPL@2048 | same model |",
           "|---|---|---|---|---|"]
    for row in sorted(runs, key=lambda r: (r["ratio"], r.get("seed", 0))):
        d = derive_auto(res, row["ratio"]).get(row.get("seed", 0))
        e = f"{tfmt(run_t(row)) if run_t(row) is not None else '—'}, {fmt(row.get('ppl128'))}, " \
            f"{fmt(row.get('ppl2048'))}"
        if d is None:
            out.append(f"| {row['ratio']:.0%} | {row.get('seed', 0)} | {NOT_RUN} (candidate rows missing) | {e} | — |")
            continue
        dr = d["row"]
        same = (run_t(row) == d["t"] and all(row.get(f) is not None and dr.get(f) is not None
                                             and math.isclose(row[f], dr[f], rel_tol=1e-6) for f, _ in PROTOCOLS))
        out.append(f"| {row['ratio']:.0%} | {row.get('seed', 0)} | {tfmt(d['t'])}, {fmt(dr.get('ppl128'))}, "
                   f"{fmt(dr.get('ppl2048'))} | {e} | {'yes' if same else '**no**'} |")
    return out


def paired(a: dict, b: dict, field: str, seeds) -> str:
    pairs = [(a[s][field], b[s][field]) for s in seeds if s in a and s in b
             and a[s].get(field) is not None and b[s].get(field) is not None]
    return f"{sum(x < y for x, y in pairs)} lower, {sum(x == y for x, y in pairs)} equal of {len(pairs)}"


def verdicts(res: dict) -> tuple[list[str], list[str]]:
    """Per ratio and protocol: auto against the better of log and FLAP's counts (on auto's seeds).
    Returns (table, summary)."""
    table = ["| ratio | protocol | seeds | auto | log | FLAP's counts | auto vs the better (mean) | beyond the seed "
             "spread | per seed vs log | per seed vs FLAP's counts |", "|---|---|---|---|---|---|---|---|---|---|"]
    ok, beyond, cells, missing = 0, [], 0, []
    for r in RATIOS:
        derived = derive_auto(res, r)
        if not derived:
            missing.append(f"{r:.0%}")
            continue
        seeds = set(derived)
        auto = {s: d["row"] for s, d in derived.items()}
        log, flap = by_seed(res, "slimgpt", r), by_seed(res, "slimgpt/flap-plan", r)
        for field, proto in PROTOCOLS:
            ma, ml, mf = (gmean(values(x, field, seeds)) for x in (auto, log, flap))
            if None in (ma, ml, mf):
                continue
            cells += 1
            best_v, best_name, mb = (log, "log", ml) if ml <= mf else (flap, "FLAP's counts", mf)
            good = ma <= mb
            ok += good
            va, vb = values(auto, field, seeds), values(best_v, field, seeds)
            if len(va) >= 2 and len(vb) >= 2:
                strict = max(va) < min(vb)
                spread = "**yes**" if strict else "no"
                if strict:
                    beyond.append(f"{r:.0%} {proto}")
            else:
                spread = "one seed"
            table.append(f"| {r:.0%} | {proto} | {','.join(map(str, sorted(seeds)))} | {fmt(ma)} | {fmt(ml)} | "
                         f"{fmt(mf)} | {pct(ma, mb)} vs {best_name}: {'as good or better' if good else '**worse**'} "
                         f"| {spread} | {paired(auto, log, field, seeds)} | {paired(auto, flap, field, seeds)} |")
    summary = [f"- auto is at least as good as the better of log and FLAP's counts (mean) in {ok} of {cells} "
               "(ratio, protocol) cells measured; better beyond the seed spread in "
               + (", ".join(beyond) if beyond else "none") + "." if cells else f"- auto vs the baselines: {NOT_RUN}."]
    if missing:
        summary.append(f"- No derived auto (a candidate row {NOT_RUN}): {', '.join(missing)}.")
    return (table if cells else []), summary


def target_lines(res: dict, dense2048) -> list[str]:
    if not dense2048:
        return [f"- Targets: the dense row is {NOT_RUN}."]
    out = []
    for r, factor in TARGETS:
        pool = {v: by_seed(res, v, r) for v in {x.get("variant") for x in res.values()}
                if v and v != "dense" and "lora" not in v and v != "auto"}
        pool[AUTO] = series(res, AUTO, r)
        means = {v: gmean(values(rows, "ppl2048")) for v, rows in pool.items()}
        means = {v: m for v, m in means.items() if m is not None}
        head = f"- {r:.0%} without fine-tuning, PPL@2048 ≤ {factor:g} × dense ({fmt(factor * dense2048)}): "
        if not means:
            out.append(head + f"{NOT_RUN}.")
            continue
        best = min(means, key=means.get)
        n = len(values(pool[best], "ppl2048"))
        x = means[best] / dense2048
        auto = (f"; auto {fmt(means[AUTO])} = {means[AUTO] / dense2048:.2f} × dense" if AUTO in means
                and best != AUTO else "")
        out.append(head + f"{'**met**' if x <= factor else '**missed**'}: best configuration {best} "
                   f"{fmt(means[best])} = {x:.2f} × dense (mean of {n} seed{'s' if n > 1 else ''}){auto}.")
    return out


def cost_lines(res: dict) -> list[str]:
    out = []
    for r in RATIOS:
        log = by_seed(res, "slimgpt", r)
        derived = derive_auto(res, r)
        est = [d["cost_s"] / log[s]["prune_s"] for s, d in derived.items()
               if d["cost_s"] is not None and log[s].get("prune_s")]
        runs = [(s, row) for s, row in by_seed(res, "auto", r).items() if row.get("prune_s")]
        parts = []
        for s, row in runs:
            base = log.get(s, {}).get("prune_s")
            parts.append(f"measured (end-to-end `auto`, seed {s}) {fmt(row['prune_s'], 0)} s"
                         + (f" = {row['prune_s'] / base:.1f} × the log prune of that seed" if base else ""))
        if est:
            parts.append(f"estimated over {len(est)} seed{'s' if len(est) > 1 else ''} "
                         f"{amean(est):.1f} × the log prune [{min(est):.1f}–{max(est):.1f}]")
        out.append(f"- {r:.0%}: " + ("; ".join(parts) if parts else NOT_RUN) + ".")
    return out


def align_table(res: dict, variant: str) -> list[str]:
    """The log rows (`--align 1`) against `variant`'s, paired by seed, at ALIGN_RATIOS."""
    out = ["| ratio | seed | parameters --align 1 → 32 | PPL@128 --align 1 → 32 | PPL@2048 --align 1 → 32 |",
           "|---|---|---|---|---|"]
    for r in ALIGN_RATIOS:
        a, b = by_seed(res, "slimgpt", r), by_seed(res, variant, r)
        seeds = sorted(set(a) & set(b))
        if not seeds:
            out.append(f"| {r:.0%} | — | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} |")
            continue
        for s in seeds:
            cells = [f"{fmt(a[s][f])} → {fmt(b[s][f])} ({pct(b[s][f], a[s][f])})" for f, _ in PROTOCOLS]
            out.append(f"| {r:.0%} | {s} | {a[s].get('params', 0):,} → {b[s].get('params', 0):,} | "
                       + " | ".join(cells) + " |")
        if len(seeds) > 1:
            cells = []
            for f, _ in PROTOCOLS:
                ma, mb = gmean(values(a, f, seeds)), gmean(values(b, f, seeds))
                cells.append(f"{fmt(ma)} → {fmt(mb)} ({pct(mb, ma)})")
            out.append(f"| {r:.0%} | mean of {len(seeds)} | | " + " | ".join(cells) + " |")
    return out


def paper_scale(row: dict) -> bool:
    """Calibrated at the paper's scale: at least 128 windows of 2048 tokens."""
    n, T = (row.get("calibration") or (0, 0))[:2]
    return n >= 128 and T == 2048


def paper_scale_lines(res: dict) -> list[str]:
    """Rows at the paper's calibration scale (≥ 128 windows of 2048 tokens) beside their base variant."""
    rows = sorted(filter(paper_scale, res.values()), key=lambda r: (r["variant"], r["ratio"], r.get("seed", 0)))
    if not rows:
        return [f"Paper-scale calibration (128 × 2048 C4 tokens): {NOT_RUN}."]
    out = ["| configuration | ratio | seed | calibration | PPL@128 | PPL@2048 | same seed, 32 × 256 | prune s | wall s |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = by_seed(res, re.sub(r"/c\d+x\d+$", "", r["variant"]), r["ratio"]).get(r.get("seed", 0))
        b = (f"{fmt(base.get('ppl128'))} / {fmt(base.get('ppl2048'))} (PPL@2048 {pct(r['ppl2048'], base['ppl2048'])} "
             "here)" if base and base.get("ppl2048") else NOT_RUN)
        n, T = r["calibration"]
        out.append(f"| {r['variant']} | {r['ratio']:.0%} | {r.get('seed', 0)} | {n} × {T} | {fmt(r.get('ppl128'))} | "
                   f"{fmt(r.get('ppl2048'))} | {b} | {fmt(r.get('prune_s'), 0)} | {fmt(r.get('wall_s'), 0)} |")
    return out


def other_rows(res: dict) -> list[str]:
    """Rows that none of the sections above shows (other methods, extra variants)."""
    shown = set(CANDIDATES.values()) | {"dense", "auto", *ALIGN}
    rows = [r for r in res.values() if r.get("variant") not in shown and not paper_scale(r)]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["ratio"], r["variant"]), {})[r.get("seed", 0)] = r
    out = ["| ratio | configuration | seeds | parameters | PPL@128 | PPL@2048 | prune s |", "|---|---|---|---|---|---|---|"]
    for (ratio, v), g in sorted(groups.items()):
        out.append(f"| {ratio:.0%} | {v} | {','.join(map(str, sorted(g)))} | {next(iter(g.values())).get('params', 0):,} "
                   f"| {cell(g, 'ppl128')} | {cell(g, 'ppl2048')} | {fmt(amean(values(g, 'prune_s')), 0)} |")
    return out if groups else [f"Other methods (FLAP, Wanda-sp): {NOT_RUN}."]


def auto_command(res: dict, ratio: float, seed: int):
    """The CLI command of a derived auto row: the end-to-end auto row's, at this ratio and seed."""
    run = next((r for r in res.values() if r.get("variant") == "auto" and r.get("command")), None)
    if run is None:
        return None
    cmd = re.sub(r"--ratio \S+", f"--ratio {ratio:g}", run["command"])
    return re.sub(r"--seed \S+", f"--seed {seed}", cmd)


def command_table(res: dict) -> list[str]:
    out = ["| configuration | PPL@128 | PPL@2048 | command |", "|---|---|---|---|"]
    for k, r in sorted(res.items(), key=lambda kv: (kv[1].get("ratio", 0), kv[1].get("variant", ""),
                                                    kv[1].get("seed", 0))):
        out.append(f"| {k} | {fmt(r.get('ppl128'))} | {fmt(r.get('ppl2048'))} | `{r.get('command', '—')}` |")
    for ratio in RATIOS:
        for s, d in derive_auto(res, ratio).items():
            cmd = auto_command(res, ratio, s)
            out.append(f"| auto@{ratio:g}#s{s} derived (t = {tfmt(d['t'])}) | {fmt(d['row'].get('ppl128'))} | "
                       f"{fmt(d['row'].get('ppl2048'))} | " + (f"`{cmd}`" if cmd else "the `auto` row's command at "
                                                              "this ratio and seed (no `auto` row yet)") + " |")
    return out


def eval_note(res: dict) -> str:
    dense = by_seed(res, "dense", 0.0).get(0, {}).get("command")
    if not dense:
        return "PPL of a pruned row: the dense row's eval commands on `pruned` (dense row not run)."
    return (f"The dense row is `{dense}`; a pruned row's PPL@128 and PPL@2048 are the same commands on `pruned` "
            f"(`{dense.replace('smollm2-135m', 'pruned')}`).")


# ----------------------------------------------------------------------------------------------
# Figure

def plot(res: dict, dense2048, path: Path) -> bool:
    """PPL@2048 vs ratio for the four allocations; False, and no file (none stale), when none has a row."""
    lines = []
    for (v, label), c in zip(SCHEDULES, ("C0", "C3", "C2", "k")):
        pts = [(100 * r, vs) for r in RATIOS if (vs := values(series(res, v, r), "ppl2048"))]
        if pts:
            lines.append((v, label.replace("*", ""), c, pts))
    if not lines:
        path.unlink(missing_ok=True)
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for v, label, c, pts in lines:
        ys = [gmean(vs) for _, vs in pts]
        err = [[max(0.0, y - min(vs)) for y, (_, vs) in zip(ys, pts)],     # max(): rounding of one seed's mean
               [max(0.0, max(vs) - y) for y, (_, vs) in zip(ys, pts)]]
        ax.errorbar([x for x, _ in pts], ys, yerr=err, color=c, marker="o", capsize=3,
                    linestyle="--" if v == AUTO else "-", label=label)
    if dense2048:
        ax.axhline(dense2048, color="grey", linewidth=0.8, linestyle=":", label="dense")
    ax.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("pruned share of prunable decoder parameters (%)")
    ax.set_ylabel("WikiText-2 PPL@2048 (log scale)")
    ax.set_title("SmolLM2-135M: geometric mean over seeds, bars = seed range", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------

def write_doc(data: dict, doc: Path, img: Path, source: Path = RESULTS) -> None:
    """docs/study.md and img/study_ppl.png from the results (settings + rows keyed by configuration)."""
    st, res = data.get("settings") or {}, data.get("results") or {}
    dense2048 = by_seed(res, "dense", 0.0).get(0, {}).get("ppl2048")
    img = Path(img)
    drawn = plot(res, dense2048, img / "study_ppl.png")
    verdict, summary = verdicts(res)
    cands = ", ".join(f"t = {tfmt(t)} (`{v}`)" for t, v in CANDIDATES.items())
    lines = [
        "# Allocation study: the log schedule, FLAP's counts and `--schedule auto` on SmolLM2-135M",
        "",
        f"*Rendered by `python benchmarks/study_report.py` from the committed `{source}` "
        f"({len(res)} row{'s' if len(res) != 1 else ''}). Every number and sentence is computed from that file; a configuration missing from it is shown as "
        f"\"{NOT_RUN}\". Edit the renderer, not this page.*",
        "",
        "## Settings",
        "",
        *settings_lines(st),
        "- PPL means are geometric means over the calibration seeds, with [min–max]; the seeds of a configuration "
        "differ only in the calibration windows drawn. Rows prune with exact counts (`--align 1`) unless named.",
        "",
        "## What `--schedule auto` does",
        "",
        "It prunes three candidate allocations, each on a copy of the dense model with the run's own method and "
        "calibration windows, and keeps the one whose pruned copy has the lowest mean next-token loss on those "
        "windows (ties: the smaller t). Candidate t sets, per layer, (1 − t) × the paper's log schedule + t × FLAP's "
        "per-layer counts, at the same parameter budget: t = 0 is `--schedule log`, t = 1 is `--schedule flap`. "
        "The score is in-sample (the windows OBS compensated on); the tables below show how it ranks on "
        "WikiText-2. Beyond the paper; see slimgpt/autoschedule.py.",
        "",
        "## Allocation: log, FLAP's counts, their blend, and auto",
        "",
        f"The study prunes the candidates as rows of their own: {cands}. The **auto** row of each (ratio, seed) is "
        "derived from them: the candidate with the lowest `calibration_loss` (ties: smaller t), only where all "
        "three candidate rows exist for that seed. That is exactly the model `--schedule auto` produces: "
        "`pipeline.choose_plan` prunes the same candidates with the same windows and keeps the same one. The "
        "auto row's prune seconds are the estimated cost of the search (below).",
        "",
        *allocation_table(res, dense2048),
        "",
        "Check: `--schedule auto` run end to end beside its derived twin (equal PPL expected).",
        "",
        *check_lines(res),
        "",
        "![PPL@2048 vs ratio](img/study_ppl.png)" if drawn else f"Figure: {NOT_RUN} (no allocation rows yet).",
        "",
        "## Verdict",
        "",
        "Per ratio and protocol, on the seeds where auto is derived; \"beyond the seed spread\" = auto's worst seed "
        "below the better baseline's best seed (≥ 2 seeds each).",
        "",
        *summary,
        "",
        *verdict,
        "",
        "Issue 21's targets (best configuration present, mean over its seeds):",
        "",
        *target_lines(res, dense2048),
        "",
        "## Cost of auto",
        "",
        "Prune wall seconds as × a plain log prune (`slimgpt` row) of the same seed. Measured: the end-to-end "
        "`auto` row. Estimated for derived rows: the three candidates' prune seconds plus the chosen one's again "
        "(the FLAP plan pass counts twice, in the t = 0.5 and t = 1 rows; the three calibration-loss passes are "
        "not counted). Wall clock on a shared machine.",
        "",
        *cost_lines(res),
        "",
        "## The quality cost of `--align 32` (the CLI default; issue 23)",
        "",
        "The log schedule with exact counts (`--align 1`, the study's rows) against each aligned rule, paired by "
        "seed: `--align 32` (FFN widths a multiple of 32 and balanced query heads per KV group, the CLI default) "
        "and `--align 32 --align-ffn-only` (FFN widths only; docs/inference.md measures its llama.cpp speed).",
        *(line for v, label in ALIGN.items() for line in ("", f"`{label}`:", "", *align_table(res, v))),
        "",
        "## The paper's calibration scale",
        "",
        *paper_scale_lines(res),
        "",
        "## Other rows",
        "",
        *other_rows(res),
        "",
        "## Reproducing a row",
        "",
        f"The results file `{source}` is committed; this page re-renders from it with one command, and each row "
        "is one command of the study runner (resumable; `--only` takes globs):",
        "",
        "```bash",
        "python benchmarks/study.py --only 'KEY'    # one row, KEY as in the table below, e.g. 'slimgpt@0.2#s1'",
        "python benchmarks/study.py --only 'slimgpt@0.2#s1' 'auto/t0.5@0.2#s1' 'slimgpt/flap-plan@0.2#s1'"
        "   # a derived auto row's candidates",
        "python benchmarks/study_report.py          # re-render this page and the figure",
        "```",
        "",
        "Each row records the CLI command that makes its model; a derived auto row has no key of its own (it is "
        "computed from its three candidates' rows) and its command is `--schedule auto` at that ratio and seed. "
        + eval_note(res),
        "",
        *command_table(res),
        "",
    ]
    doc = Path(doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", "--cache", dest="results", type=Path, default=RESULTS)
    ap.add_argument("--doc", type=Path, default=Path("docs/study.md"))
    ap.add_argument("--img", type=Path, default=Path("docs/img"))
    args = ap.parse_args(argv)
    try:
        data = json.loads(args.results.read_text())
    except (OSError, ValueError) as e:
        print(f"study_report: cannot read {args.results}: {e}", file=sys.stderr)
        sys.exit(2)
    write_doc(data, args.doc, args.img, args.results)
    print(f"wrote {args.doc}" + (f" and {args.img / 'study_ppl.png'}" if (args.img / "study_ppl.png").exists() else ""))


if __name__ == "__main__":
    main()
