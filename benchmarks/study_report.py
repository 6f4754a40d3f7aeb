"""Render the allocation study (benchmarks/study.py) from its committed results file: docs/study.md
and the figure docs/img/study_ppl.png. A pure renderer (JSON in, page out, no model), so a partial
file renders at any time and the page re-renders with one command:

    python benchmarks/study_report.py          # benchmarks/results/study.json -> docs/study.md

Every number and sentence of the page is computed from the rows; a configuration that is not in
the file is shown as "not run". The page keeps the evidence for removing `--schedule auto` (last
in commit 10a61b2): its row per (ratio, seed) is derived from its three candidate rows (lowest
calibration loss, ties to the smaller t), which is the choice pipeline.choose_plan made on the
same windows; the one end-to-end `auto` row checks that.
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
# the auto schedule's candidates t (autoschedule.BLENDS at 10a61b2) and the study rows that prune them
CANDIDATES = {0.0: "slimgpt", 0.5: "auto/t0.5", 1.0: "slimgpt/flap-plan"}
AUTO = "auto"                           # derived from the candidates; the variant "auto" is the end-to-end run
SCHEDULES = (("slimgpt", "log (paper)"), ("slimgpt/flap-plan", "FLAP's counts (t = 1)"),
             ("auto/t0.5", "blend t = 0.5"), (AUTO, "**auto** (removed; derived)"))
# the two allocations the CLI keeps: variant, name, flag
BASELINES = (("slimgpt", "log", "`--schedule log`, the default"),
             ("slimgpt/flap-plan", "FLAP's counts", "`--schedule flap`"))
PROTOCOLS = (("ppl128", "PPL@128"), ("ppl2048", "PPL@2048"))
REMOVED_AT = "10a61b2"                  # the last commit with --schedule auto and --auto-blends
REMOVED = {"auto", "auto/t0.5"}         # variants made by the removed option: reproducible only at REMOVED_AT
BAR_SEEDS = 3                           # issue 21's bar is judged over three calibration seeds
BAR = ("at least as good as the better of the log schedule and FLAP's counts (mean over 3 calibration seeds) at "
       "every ratio from 10% to 60% on both protocols (PPL@128 and PPL@2048), and strictly better somewhere "
       "beyond the seed spread")
TARGETS = ((0.2, 1.6), (0.5, 5.0))      # issue 21: PPL@2048 ≤ factor × dense, without fine-tuning
LORA_TARGET_RATIO = 0.2
ALIGN = {"slimgpt/align32": "--align 32", "slimgpt/align32-ffn": "--align 32 --align-ffn-only"}
ALIGN_RATIOS = (0.2, 0.5)
# the paper's calibration scale (128 × 2048 C4 tokens, one seed): variant, its 32 × 256 twin, ratio
PAPER_SCALE = (("slimgpt/c128x2048", "slimgpt", 0.2), ("slimgpt/flap-plan/c128x2048", "slimgpt/flap-plan", 0.2),
               ("slimgpt/c128x2048", "slimgpt", 0.5))
PAPER_SEED = 0
# LoRA recovery on the best 20% configuration before the paper-scale rows: none, 60 steps, 240 steps
RECOVERY = ("slimgpt/flap-plan/c16x2048", "slimgpt/flap-plan/c16x2048+lora", "slimgpt/flap-plan/c16x2048+lora-long")
RECOVERY_RATIO, RECOVERY_SEED = 0.2, 0
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


def beyond_spread(better: list, worse: list):
    """True when every value of `better` is below every value of `worse`; None with fewer than two
    values on either side (one seed has no spread to be beyond)."""
    if len(better) < 2 or len(worse) < 2:
        return None
    return max(better) < min(worse)


def fmt(x, nd=2):
    if x is None:
        return "—"
    if math.isinf(x) or math.isnan(x):
        return str(x)
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{nd}f}"


def tfmt(t: float) -> str:
    return f"{t:g}"


def seconds(s) -> str:
    """Wall seconds with minutes beside them."""
    return "—" if s is None else f"{s:,.0f} s ({s / 60:.1f} min)"


def times_dense(ppl, dense) -> str:
    return f"{ppl / dense:.2f} ×" if ppl is not None and dense else "—"


def cell(rows: dict, field: str) -> str:
    v = values(rows, field)
    if not v:
        return NOT_RUN
    return fmt(gmean(v)) + (f" [{fmt(min(v))}–{fmt(max(v))}]" if len(v) > 1 else "")


def pct(a, b) -> str:
    d = 100 * (a - b) / b
    return "±0.0%" if abs(d) < 0.05 else f"{d:+.1f}%"


def n_seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


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


def auto_cells(res: dict) -> tuple[list[dict], list[str]]:
    """Per (ratio, protocol) where auto is derived: auto against the better of log and FLAP's counts,
    on auto's seeds. Returns (cells, the ratios without a derived auto)."""
    cells, missing = [], []
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
            best, best_name, mb = (log, "log", ml) if ml <= mf else (flap, "FLAP's counts", mf)
            cells.append({"ratio": r, "field": field, "proto": proto, "seeds": seeds, "auto": auto, "log": log,
                          "flap": flap, "ma": ma, "ml": ml, "mf": mf, "mb": mb, "best_name": best_name,
                          "good": ma <= mb,
                          "beyond": beyond_spread(values(auto, field, seeds), values(best, field, seeds))})
    return cells, missing


def verdict_table(cells: list[dict]) -> list[str]:
    if not cells:
        return []
    out = ["| ratio | protocol | seeds | auto | log | FLAP's counts | auto vs the better (mean) | beyond the seed "
           "spread | per seed vs log | per seed vs FLAP's counts |", "|---|---|---|---|---|---|---|---|---|---|"]
    spread = {True: "**yes**", False: "no", None: "one seed"}
    for c in cells:
        f, seeds = c["field"], c["seeds"]
        out.append(f"| {c['ratio']:.0%} | {c['proto']} | {','.join(map(str, sorted(seeds)))} | {fmt(c['ma'])} | "
                   f"{fmt(c['ml'])} | {fmt(c['mf'])} | {pct(c['ma'], c['mb'])} vs {c['best_name']}: "
                   f"{'as good or better' if c['good'] else '**worse**'} | {spread[c['beyond']]} | "
                   f"{paired(c['auto'], c['log'], f, seeds)} | {paired(c['auto'], c['flap'], f, seeds)} |")
    return out


def bar_status(cells: list[dict]) -> str:
    """Issue 21's bar on the cells: "not met" as soon as one cell is worse; otherwise "undecided"
    until every (ratio, protocol) has three seeds; then "met" only if some cell is beyond the spread."""
    if any(not c["good"] for c in cells):
        return "not met"
    if len(cells) < len(RATIOS) * len(PROTOCOLS) or any(len(c["seeds"]) < BAR_SEEDS for c in cells):
        return "undecided"
    return "met" if any(c["beyond"] for c in cells) else "not met"


def bar_lines(cells: list[dict], missing: list[str]) -> list[str]:
    """(a) cells where auto ≥ the better baseline, (b) cells beyond the spread, (c) the bar."""
    total = len(RATIOS) * len(PROTOCOLS)
    ok = sum(c["good"] for c in cells)
    beyond = [f"{c['ratio']:.0%} {c['proto']}" for c in cells if c["beyond"]]
    measured = f" ({len(cells)} measured)" if len(cells) < total else ""
    status = bar_status(cells)
    conclusion = {"met": "issue 21's bar is **met**: auto earns its place by that rule",
                  "not met": "issue 21's bar is **not met** → `--schedule auto` removed",
                  "undecided": f"issue 21's bar is undecided: it needs all {total} cells on {BAR_SEEDS} seeds"}
    out = [f"- (a) auto is at least as good as the better of log and FLAP's counts (mean) in {ok} of {total} "
           f"(ratio, protocol) cells{measured};",
           f"- (b) better beyond the seed spread in {len(beyond)} of {total}" + (f": {', '.join(beyond)}" if beyond
                                                                                 else "") + ";",
           f"- (c) therefore {conclusion[status]}."]
    if missing:
        out.append(f"- No derived auto (a candidate row {NOT_RUN}): {', '.join(missing)}.")
    return out


def baseline_pick(res: dict, r: float, field: str):
    """(index into BASELINES of the lower mean, its % vs the other, beyond the spread) on the seeds
    both have, or None."""
    rows = [by_seed(res, v, r) for v, _, _ in BASELINES]
    seeds = set(rows[0]) & set(rows[1])
    means = [gmean(values(x, field, seeds)) for x in rows]
    if None in means:
        return None
    win = 0 if means[0] <= means[1] else 1
    return (win, pct(means[win], means[1 - win]),
            beyond_spread(values(rows[win], field, seeds), values(rows[1 - win], field, seeds)))


def pick_detail(pick) -> str:
    win, change, beyond = pick
    spread = {True: "beyond the seed spread", False: "within the seed spread", None: "one seed"}[beyond]
    return f"{change} vs {BASELINES[1 - win][1]}, {spread}"


def which_schedule_lines(res: dict) -> list[str]:
    """Per ratio: the better of log and FLAP's counts by mean PPL@2048 and by mean PPL@128."""
    out = []
    for r in RATIOS:
        picks = [(proto, p) for field, proto in reversed(PROTOCOLS) if (p := baseline_pick(res, r, field))]
        if not picks:
            out.append(f"- {r:.0%}: {NOT_RUN}.")
            continue
        winners = {p[0] for _, p in picks}
        if len(winners) == 1 and len(picks) == len(PROTOCOLS):
            _, name, flag = BASELINES[picks[0][1][0]]
            out.append(f"- {r:.0%}: {name} ({flag}) on both protocols ("
                       + "; ".join(f"{proto} {pick_detail(p)}" for proto, p in picks) + ").")
        else:
            out.append(f"- {r:.0%}: " + "; ".join(f"{BASELINES[p[0]][1]} ({BASELINES[p[0]][2]}) by {proto} "
                                                  f"({pick_detail(p)})" for proto, p in picks) + ".")
    return out


def finetuned(variant: str) -> bool:
    return "lora" in variant


def best_config(res: dict, r: float, accept) -> tuple | None:
    """(variant, mean PPL@2048, seeds) of the lowest mean PPL@2048 at ratio r among the variants
    `accept` admits, or None."""
    means = {}
    for v in {x.get("variant") for x in res.values()} - {None, "dense"}:
        vals = values(by_seed(res, v, r), "ppl2048")
        if accept(v) and vals:
            means[v] = (gmean(vals), len(vals))
    if not means:
        return None
    v = min(means, key=lambda v: means[v][0])
    return v, *means[v]


def target_lines(res: dict, dense2048) -> list[str]:
    """Issue 21's targets without fine-tuning, among the configurations the CLI still makes (a
    removed one that would be better is named beside), and the best LoRA row for information."""
    if not dense2048:
        return [f"- Targets: the dense row is {NOT_RUN}."]
    out = []
    for r, factor in TARGETS:
        head = f"- {r:.0%} without fine-tuning, PPL@2048 ≤ {factor:g} × dense ({fmt(factor * dense2048)}): "
        best = best_config(res, r, lambda v: not finetuned(v) and v not in REMOVED)
        if best is None:
            out.append(head + f"{NOT_RUN}.")
            continue
        v, m, n = best
        x = m / dense2048
        # a removed configuration that did better is named, so the miss is not blamed on the removal
        removed = best_config(res, r, lambda v: v in REMOVED)
        better = [(f"`{removed[0]}`", removed[1])] if removed else []
        better.append(("auto (derived)", gmean(values(series(res, AUTO, r), "ppl2048"))))
        note = "".join(f"; removed {name} {fmt(mr)} = {mr / dense2048:.2f} × dense" for name, mr in better
                       if mr is not None and mr < m)
        out.append(head + f"{'**met**' if x <= factor else '**missed**'}: best configuration `{v}` {fmt(m)} = "
                   f"{x:.2f} × dense ({'mean of ' if n > 1 else ''}{n_seeds(n)}){note}.")
    lora = best_config(res, LORA_TARGET_RATIO, finetuned)
    out.append(f"- For information, {LORA_TARGET_RATIO:.0%} with LoRA fine-tuning: "
               + (f"best `{lora[0]}` {fmt(lora[1])} = {lora[1] / dense2048:.2f} × dense ({n_seeds(lora[2])})."
                  if lora else f"{NOT_RUN}."))
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
            parts.append(f"estimated over {n_seeds(len(est))} "
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


def scale_cells(row, dense2048) -> str:
    """PPL@128 | PPL@2048 | × dense | prune time of one row, or "not run"."""
    if row is None:
        return " | ".join([NOT_RUN] * 4)
    return (f"{fmt(row.get('ppl128'))} | {fmt(row.get('ppl2048'))} | {times_dense(row.get('ppl2048'), dense2048)} | "
            f"{seconds(row.get('prune_s'))}")


def paper_scale_lines(res: dict, dense2048) -> list[str]:
    """The paper-scale rows beside their 32 × 256 twins of the same seed."""
    out = ["| configuration | ratio | 128 × 2048: PPL@128 | PPL@2048 | × dense | prune | 32 × 256 (same seed): "
           "PPL@128 | PPL@2048 | × dense | prune | PPL@2048 128 × 2048 vs 32 × 256 |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v, twin, r in PAPER_SCALE:
        row, base = by_seed(res, v, r).get(PAPER_SEED), by_seed(res, twin, r).get(PAPER_SEED)
        change = (pct(row["ppl2048"], base["ppl2048"]) if row and base and row.get("ppl2048") and base.get("ppl2048")
                  else "—")
        out.append(f"| `{v}` (twin `{twin}`) | {r:.0%} | {scale_cells(row, dense2048)} | "
                   f"{scale_cells(base, dense2048)} | {change} |")
    return out


def recovery_lines(res: dict, dense2048) -> list[str]:
    """The recovery configuration without fine-tuning and after each LoRA budget."""
    out = ["| configuration | fine-tuning tokens (steps × batch × seqlen) | PPL@128 before → after | "
           "PPL@2048 before → after | @2048 × dense after | fine-tune wall time |", "|---|---|---|---|---|---|"]
    for v in RECOVERY:
        row = by_seed(res, v, RECOVERY_RATIO).get(RECOVERY_SEED)
        if row is None:
            out.append(f"| `{v}` | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} |")
            continue
        ft = row.get("finetune")
        after = {f: row.get(f) for f, _ in PROTOCOLS}
        if ft is None:
            tokens, ppl, wall = "none", [fmt(after[f]) for f, _ in PROTOCOLS], "—"
        else:
            st = ft.get("settings") or {}
            tokens = f"{ft['tokens']:,} ({ft['steps']} × {st.get('batch', '?')} × {st.get('seqlen', '?')})"
            ppl = [f"{fmt(row.get(f + '_before'))} → {fmt(after[f])}"
                   + (f" ({pct(after[f], row[f + '_before'])})" if row.get(f + "_before") and after[f] else "")
                   for f, _ in PROTOCOLS]
            wall = seconds(ft.get("seconds"))
        out.append(f"| `{v}` | {tokens} | {ppl[0]} | {ppl[1]} | {times_dense(after['ppl2048'], dense2048)} | "
                   f"{wall} |")
    return out


def other_rows(res: dict) -> list[str]:
    """Rows that none of the sections above shows (other methods, extra variants)."""
    shown = set(CANDIDATES.values()) | {"dense", "auto", *ALIGN, *RECOVERY, *(v for v, _, _ in PAPER_SCALE)}
    rows = [r for r in res.values() if r.get("variant") not in shown]
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
    at_removal = f"commit {REMOVED_AT}"
    out = ["| configuration | PPL@128 | PPL@2048 | code | command |", "|---|---|---|---|---|"]
    for k, r in sorted(res.items(), key=lambda kv: (kv[1].get("ratio", 0), kv[1].get("variant", ""),
                                                    kv[1].get("seed", 0))):
        code = at_removal if r.get("variant") in REMOVED else "current"
        out.append(f"| {k} | {fmt(r.get('ppl128'))} | {fmt(r.get('ppl2048'))} | {code} | `{r.get('command', '—')}` |")
    for ratio in RATIOS:
        for s, d in derive_auto(res, ratio).items():
            cmd = auto_command(res, ratio, s)
            out.append(f"| auto@{ratio:g}#s{s} derived (t = {tfmt(d['t'])}) | {fmt(d['row'].get('ppl128'))} | "
                       f"{fmt(d['row'].get('ppl2048'))} | {at_removal} | "
                       + (f"`{cmd}`" if cmd else "the `auto` row's command at this ratio and seed (no `auto` row)")
                       + " |")
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
# The page, section by section

def reproduce_at_removal(key: str) -> str:
    return f"git checkout {REMOVED_AT} && python benchmarks/study.py --only '{key}'"


def auto_section(res: dict, dense2048, drawn: bool, status: str) -> list[str]:
    """What auto did, why it went (the bar's status decides the sentence), its allocation table."""
    cands = ", ".join(f"t = {tfmt(t)} (`{v}`)" for t, v in CANDIDATES.items())
    why = {"not met": "It was removed because it did not meet issue 21's bar (the verdict below): " + BAR + ".",
           "met": "The verdict below finds issue 21's bar met (" + BAR + "), yet the option is no longer shipped.",
           "undecided": "It was removed; the verdict below cannot yet decide issue 21's bar (" + BAR + ")."}[status]
    return [
        "## What `--schedule auto` did (removed)",
        "",
        f"{why} The rows labelled auto or blend were made by it at commit {REMOVED_AT}, the last that has "
        f"`--schedule auto` and `--auto-blends`, and are reproducible there: `{reproduce_at_removal('KEY')}`.",
        "",
        "It pruned three candidate allocations, each on a copy of the dense model with the run's own method and "
        "calibration windows, and kept the one whose pruned copy had the lowest mean next-token loss on those "
        "windows (ties: the smaller t). Candidate t set, per layer, (1 − t) × the paper's log schedule + t × FLAP's "
        "per-layer counts, at the same parameter budget: t = 0 is `--schedule log`, t = 1 is `--schedule flap`. "
        "The score was in-sample (the windows OBS compensated on); the tables below show how it ranked on "
        "WikiText-2.",
        "",
        "## Allocation: log, FLAP's counts, their blend, and auto",
        "",
        f"The study prunes the candidates as rows of their own: {cands}. The auto row of each (ratio, seed) is "
        "derived from them: the candidate with the lowest `calibration_loss` (ties: smaller t), only where all "
        "three candidate rows exist for that seed. That is exactly the model `--schedule auto` produced: "
        "`pipeline.choose_plan` pruned the same candidates with the same windows and kept the same one. The "
        "auto row's prune seconds are the estimated cost of the search (below).",
        "",
        *allocation_table(res, dense2048),
        "",
        f"Check: `--schedule auto` run end to end (commit {REMOVED_AT}) beside its derived twin (equal PPL expected).",
        "",
        *check_lines(res),
        "",
        "![PPL@2048 vs ratio](img/study_ppl.png)" if drawn else f"Figure: {NOT_RUN} (no allocation rows yet).",
    ]


def verdict_section(res: dict, cells: list[dict], missing: list[str], dense2048) -> list[str]:
    """Issue 21's bar, which schedule to use instead, the targets, and what auto's search cost."""
    return [
        "## Verdict",
        "",
        f"Issue 21's bar for keeping auto: {BAR}. Per ratio and protocol, on the seeds where auto is derived; "
        "\"beyond the seed spread\" = auto's worst seed below the better baseline's best seed (≥ 2 seeds each).",
        "",
        *bar_lines(cells, missing),
        "",
        *verdict_table(cells),
        "",
        "### Which schedule to use",
        "",
        "Per ratio, the better of the two allocations the CLI keeps, by mean PPL@2048 and by mean PPL@128 over the "
        "seeds both have (% = its mean against the other's):",
        "",
        *which_schedule_lines(res),
        "",
        "### Issue 21's targets",
        "",
        "Best configuration present at that ratio without fine-tuning, among every row the current CLI makes "
        "except LoRA ones (paper-scale rows included; mean over its seeds, a one-seed row counts as its one seed); "
        "a removed configuration that did better is named beside it:",
        "",
        *target_lines(res, dense2048),
        "",
        "## Cost of auto (removed)",
        "",
        "Prune wall seconds as × a plain log prune (`slimgpt` row) of the same seed. Measured: the end-to-end "
        "`auto` row. Estimated for derived rows: the three candidates' prune seconds plus the chosen one's again "
        "(the FLAP plan pass counts twice, in the t = 0.5 and t = 1 rows; the three calibration-loss passes are "
        "not counted). Wall clock on a shared machine.",
        "",
        *cost_lines(res),
    ]


def measured_sections(res: dict, dense2048) -> list[str]:
    """--align 32's cost, the paper's calibration scale, LoRA recovery, the other rows."""
    return [
        "## The quality cost of `--align 32` (the CLI default; issue 23)",
        "",
        "The log schedule with exact counts (`--align 1`, the study's rows) against each aligned rule, paired by "
        "seed: `--align 32` (FFN widths a multiple of 32 and balanced query heads per KV group, the CLI default) "
        "and `--align 32 --align-ffn-only` (FFN widths only; docs/inference.md measures its llama.cpp speed).",
        *(line for v, label in ALIGN.items() for line in ("", f"`{label}`:", "", *align_table(res, v))),
        "",
        "## The paper's calibration scale",
        "",
        f"128 windows of 2048 C4 tokens (seed {PAPER_SEED}; the scale of the published 20% command, the paper's "
        "tables use 256 × 2048) beside the same configuration and seed at the study's 32 × 256; prune = wall time "
        "of the pruning alone (two rows ran at once on the 2 cores: indicative). The rows ran in memory (no "
        "streaming) on this 24 GB machine.",
        "",
        *paper_scale_lines(res, dense2048),
        "",
        "## Recovery (LoRA)",
        "",
        f"OBS with FLAP's counts and 16 × 2048 calibration at {RECOVERY_RATIO:.0%} (seed {RECOVERY_SEED}), the best "
        f"{RECOVERY_RATIO:.0%} configuration before the paper-scale rows were run (the 128 × 2048 rows above came "
        "later; recovery on them would cost another 40 minutes of pruning here), then `slimgpt finetune` (LoRA "
        "distilled from the dense model) with two token budgets. "
        "Before = the pruned model, after = merged adapters; fine-tune wall time includes its validation passes.",
        "",
        *recovery_lines(res, dense2048),
        "",
        "## Other rows",
        "",
        *other_rows(res),
    ]


def reproduce_section(res: dict, source: Path) -> list[str]:
    return [
        "## Reproducing a row",
        "",
        f"The results file `{source}` is committed; this page re-renders from it with one command, and each row "
        "is one command of the study runner (resumable; `--only` takes globs). Rows whose code column names "
        f"commit {REMOVED_AT} were made by the removed `--schedule auto` and run only there:",
        "",
        "```bash",
        "python benchmarks/study.py --only 'KEY'    # one row, KEY as in the table below, e.g. 'slimgpt@0.2#s1'",
        f"{reproduce_at_removal('auto/t0.5@0.2#s1')}   # a row of the removed auto",
        "python benchmarks/study_report.py          # re-render this page and the figure",
        "```",
        "",
        "Each row records the CLI command that makes its model; a derived auto row has no key of its own (it is "
        "computed from its three candidates' rows) and its command is `--schedule auto` at that ratio and seed, at "
        f"commit {REMOVED_AT}. "
        + eval_note(res),
        "",
        *command_table(res),
    ]


def write_doc(data: dict, doc: Path, img: Path, source: Path = RESULTS) -> None:
    """docs/study.md and img/study_ppl.png from the results (settings + rows keyed by configuration)."""
    st, res = data.get("settings") or {}, data.get("results") or {}
    dense2048 = by_seed(res, "dense", 0.0).get(0, {}).get("ppl2048")
    drawn = plot(res, dense2048, Path(img) / "study_ppl.png")
    cells, missing = auto_cells(res)
    lines = [
        "# Allocation study on SmolLM2-135M: the log schedule, FLAP's counts, and why `--schedule auto` was removed",
        "",
        f"*Rendered by `python benchmarks/study_report.py` from the committed `{source}` ({len(res)} "
        f"row{'s' if len(res) != 1 else ''}). Every number and sentence is computed from that file; a configuration "
        f"missing from it is shown as \"{NOT_RUN}\". Edit the renderer, not this page.*",
        "",
        "## Settings",
        "",
        *settings_lines(st),
        "- PPL means are geometric means over the calibration seeds, with [min–max]; the seeds of a configuration "
        "differ only in the calibration windows drawn. Rows prune with exact counts (`--align 1`) unless named.",
        "",
        *auto_section(res, dense2048, drawn, bar_status(cells)),
        "",
        *verdict_section(res, cells, missing, dense2048),
        "",
        *measured_sections(res, dense2048),
        "",
        *reproduce_section(res, source),
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
