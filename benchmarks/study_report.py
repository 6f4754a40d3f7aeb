"""Render the quality study (benchmarks/study.py) from its JSON cache: docs/study.md and the
figures docs/img/study_*.png. Separate from the runner so a partial cache can be rendered at
any time:

    python benchmarks/study_report.py                   # out/study/results.json -> docs/study.md

Every sentence of the discussion is computed from the cached rows (means, seed ranges, ratios to
dense), so re-rendering after more rows can never leave a stale claim behind. "Beyond the seed
spread" means that the worst calibration seed of one configuration is better than the best seed
of the other (both with at least two seeds); otherwise a difference is reported as within the
spread, or as a single-seed observation.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# Display order and labels (variant -> label). Unknown variants are shown by name, last.
LABELS = {
    "dense": "dense",
    "slimgpt": "SlimGPT (paper: log schedule)",
    "auto": "SlimGPT, auto schedule",
    "auto+bias": "SlimGPT, auto schedule + bias",
    "slimgpt+bias": "SlimGPT + bias",
    "slimgpt/flap-plan": "SlimGPT with FLAP's per-layer counts",
    "slimgpt/flap-plan/c16x2048": "SlimGPT with FLAP's per-layer counts, 16 x 2048 calibration",
    "slimgpt/flap-plan/c16x2048+lora": "SlimGPT with FLAP's counts, 16 x 2048 calibration + LoRA",
    "flap/c16x2048": "FLAP, 16 x 2048 calibration",
    "slimgpt/gqa-group": "SlimGPT, whole KV groups (--gqa group)",
    "auto/gqa-group": "SlimGPT, auto + whole KV groups",
    "slimgpt/damp0.001": "SlimGPT, percdamp 0.001",
    "slimgpt/damp0.1": "SlimGPT, percdamp 0.1",
    "slimgpt/c128x512": "SlimGPT, 128 x 512 calibration",
    "slimgpt/c64x2048": "SlimGPT, 64 x 2048 calibration",
    "slimgpt/c16x2048": "SlimGPT, 16 x 2048 calibration",
    "auto/c16x2048": "SlimGPT, auto schedule, 16 x 2048 calibration",
    "auto+bias/c16x2048": "SlimGPT, auto + bias, 16 x 2048 calibration",
    "auto/relative": "SlimGPT, auto schedule (residual-relative errors)",
    "auto/relative/c16x2048": "SlimGPT, auto (residual-relative), 16 x 2048 calibration",
    "auto/output": "SlimGPT, auto schedule (output-relative errors)",
    "auto+bias/c128x512": "SlimGPT, auto + bias, 128 x 512 calibration",
    "flap": "FLAP",
    "flap-nobias": "FLAP without bias",
    "wanda-sp": "Wanda-sp",
    "magnitude": "magnitude",
    "slimgpt+lora": "SlimGPT + LoRA",
    "auto+bias+lora": "SlimGPT, auto + bias + LoRA",
    "flap+lora": "FLAP + LoRA",
    "dense+lora": "dense + LoRA (control)",
    "no-compensation": "SlimGPT −compensation",
    "no-gcd": "SlimGPT −GCD",
    "no-dgs": "SlimGPT −DGS (group 128)",
    "slimgpt/uniform": "SlimGPT, uniform schedule",
    "slimgpt/log-decrease": "SlimGPT, log-decrease schedule",
    "slimgpt/linear": "SlimGPT, linear schedule",
    "slimgpt/linear-decrease": "SlimGPT, linear-decrease schedule",
}
PROTOCOLS = (("ppl128", "PPL@128"), ("ppl2048", "PPL@2048"))
FAMILY = ("slimgpt", "auto", "auto+bias", "slimgpt/c16x2048", "auto/c16x2048", "auto+bias/c16x2048", "auto/relative",
          "auto/output", "auto/relative/c16x2048", "slimgpt+bias", "slimgpt/flap-plan", "slimgpt/flap-plan/c16x2048", "slimgpt/gqa-group", "auto/gqa-group",
          "slimgpt/damp0.001", "slimgpt/damp0.1", "slimgpt/c128x512", "slimgpt/c64x2048", "auto+bias/c128x512")
TARGETS = {  # (ratio, fine-tuned, protocol, factor of dense): the targets
    "20% without fine-tuning: PPL@2048 ≤ 1.6 × dense": (0.2, False, "ppl2048", 1.6),
    "20% with LoRA recovery: PPL@2048 ≤ 1.3 × dense": (0.2, True, "ppl2048", 1.3),
    "50% without fine-tuning: PPL@2048 ≤ 4 × dense": (0.5, False, "ppl2048", 4.0),
}


def load(cache: Path) -> dict:
    if Path(cache).exists():
        return json.loads(Path(cache).read_text())
    return {"settings": {}, "results": {}}


# ----------------------------------------------------------------------------------------------
# Aggregation over seeds

class Agg:
    """The seeds of one (variant, ratio): mean, min and max of each protocol."""

    def __init__(self, variant: str, ratio: float, rows: list):
        self.variant, self.ratio, self.rows = variant, ratio, sorted(rows, key=lambda r: r.get("seed", 0))
        self.n = len(rows)
        self.seeds = [r.get("seed", 0) for r in self.rows]

    def values(self, field):
        return [r[field] for r in self.rows if r.get(field) is not None]

    def mean(self, field):
        v = self.values(field)
        return math.exp(sum(math.log(x) for x in v) / len(v)) if v else None     # geometric mean of PPL

    def lo(self, field):
        v = self.values(field)
        return min(v) if v else None

    def hi(self, field):
        v = self.values(field)
        return max(v) if v else None

    def spread(self, field):
        """Half the seed range relative to the mean (±%), None for one seed."""
        v = self.values(field)
        return None if len(v) < 2 else 100 * (max(v) - min(v)) / 2 / self.mean(field)

    @property
    def label(self):
        return LABELS.get(self.variant, self.variant)

    @property
    def params(self):
        return self.rows[0].get("params")

    def first(self, field):
        return next((r[field] for r in self.rows if r.get(field) is not None), None)


def aggregate(results: dict) -> dict:
    groups: dict = {}
    for r in results.values():
        v = r.get("variant") or r.get("method")
        groups.setdefault((v, float(r.get("ratio", 0.0))), []).append(r)
    return {k: Agg(k[0], k[1], rows) for k, rows in groups.items()}


def _order(a: Agg):
    names = list(LABELS)
    return (a.ratio, names.index(a.variant) if a.variant in names else 99, a.variant)


def _fmt(x, nd=2):
    if x is None:
        return "—"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return "∞" if x == math.inf else "nan"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"


def _cell(a: Agg, field):
    m = a.mean(field)
    if m is None:
        return "—"
    if a.n < 2:
        return _fmt(m)
    return f"{_fmt(m)} [{_fmt(a.lo(field))}–{_fmt(a.hi(field))}]"


# ----------------------------------------------------------------------------------------------
# Comparisons (the only source of the discussion's claims)

def compare(a: Agg, b: Agg, field: str) -> dict:
    """How a compares with b on one protocol (lower is better)."""
    ma, mb = a.mean(field), b.mean(field)
    if ma is None or mb is None:
        return {}
    pct = 100 * (ma - mb) / mb
    both = a.n >= 2 and b.n >= 2
    if both and a.hi(field) < b.lo(field):
        verdict = "better beyond the seed spread"
    elif both and a.lo(field) > b.hi(field):
        verdict = "worse beyond the seed spread"
    elif both:
        verdict = "within the seed spread"
    else:
        verdict = "single seed"
    paired = None
    sa = {r.get("seed"): r.get(field) for r in a.rows}
    sb = {r.get("seed"): r.get(field) for r in b.rows}
    common = [s for s in sa if s in sb and sa[s] is not None and sb[s] is not None]
    if len(common) >= 2:
        paired = sum(sa[s] < sb[s] for s in common), len(common)
    return {"a": ma, "b": mb, "pct": pct, "verdict": verdict, "paired": paired}


def _cmp_text(a: Agg, b: Agg, field: str, proto: str) -> str:
    c = compare(a, b, field)
    if not c:
        return ""
    word = "lower" if c["pct"] < 0 else "higher"
    s = (f"{proto} {_fmt(c['a'])} vs {_fmt(c['b'])} ({abs(c['pct']):.1f}% {word}; {c['verdict']}")
    if c["paired"]:
        s += f"; lower on {c['paired'][0]} of {c['paired'][1]} paired seeds"
    return s + ")"


def _sp(a: Agg, field) -> str:
    sp = a.spread(field)
    return f"±{sp:.1f}% over {a.n} seeds" if sp is not None else "one seed"


# ----------------------------------------------------------------------------------------------
# Sections

def results_table(aggs: dict, dense: Agg | None, keys=None) -> str:
    out = ["| ratio | configuration | parameters | seeds | PPL@128 mean [min–max] | PPL@2048 mean [min–max] | "
           "@2048 × dense | prune s |",
           "|---|---|---|---|---|---|---|---|"]
    d2048 = dense.mean("ppl2048") if dense else None
    for a in sorted(aggs.values(), key=_order):
        if keys is not None and a.variant not in keys:
            continue
        ratio = "0%" if a.variant.startswith("dense") else f"{a.ratio:.0%}"
        x = f"{a.mean('ppl2048') / d2048:.2f}" if d2048 and a.mean("ppl2048") else "—"
        ps = a.values("prune_s")
        out.append(f"| {ratio} | {a.label} | {a.params:,} | {','.join(map(str, a.seeds))} | {_cell(a, 'ppl128')} | "
                   f"{_cell(a, 'ppl2048')} | {x} | {_fmt(sum(ps) / len(ps), 0) if ps else '—'} |")
    return "\n".join(out)


def _get(aggs, v, r):
    return aggs.get((v, float(r)))


def key_findings(aggs: dict, dense: Agg | None) -> list[str]:
    lines = []
    for r in (0.2, 0.5):
        s, f = _get(aggs, "slimgpt", r), _get(aggs, "flap", r)
        if s and f:
            for field, proto in PROTOCOLS:
                lines.append(f"- {r:.0%}, SlimGPT (paper) vs FLAP: " + _cmp_text(s, f, field, proto) + ".")
        w = _get(aggs, "wanda-sp", r)
        if s and w:
            lines.append(f"- {r:.0%}, SlimGPT (paper) vs Wanda-sp: " + _cmp_text(s, w, "ppl2048", "PPL@2048") + ".")
        if s:
            lines.append(f"- {r:.0%}, calibration-seed spread of SlimGPT (paper): PPL@128 {_sp(s, 'ppl128')}, "
                         f"PPL@2048 {_sp(s, 'ppl2048')}.")
        # the best SlimGPT-family configuration without fine-tuning vs FLAP
        fam = [a for a in (_get(aggs, v, r) for v in FAMILY) if a and a.mean("ppl2048")]
        if fam and f:
            best = min(fam, key=lambda a: a.mean("ppl2048"))
            texts = [_cmp_text(best, f, field, proto) for field, proto in PROTOCOLS]
            beats = all(compare(best, f, fl).get("verdict") == "better beyond the seed spread" for fl, _ in PROTOCOLS)
            lines.append(f"- {r:.0%}, best SlimGPT-family configuration by PPL@2048 is **{best.label}**; vs FLAP: "
                         + "; ".join(texts) + (". It is below FLAP on both protocols beyond the seed spread."
                                               if beats else ". It is not below FLAP on both protocols beyond the "
                                                             "seed spread."))
    return lines


HYPOTHESES = [
    # (variant, against, ratio, what it tests)
    ("slimgpt/flap-plan", "slimgpt", 0.2, "FLAP's per-layer allocation (its global threshold) instead of the log "
                                          "schedule, SlimGPT's OBS kept"),
    ("slimgpt/flap-plan", "slimgpt", 0.5, "FLAP's per-layer allocation at 50%"),
    ("slimgpt/flap-plan/c16x2048", "slimgpt/flap-plan", 0.2, "16 x 2048 calibration with FLAP's per-layer counts"),
    ("slimgpt/flap-plan/c16x2048", "slimgpt/flap-plan", 0.5, "16 x 2048 calibration with FLAP's counts at 50%"),
    ("flap/c16x2048", "flap", 0.2, "16 x 2048 calibration for FLAP itself (control)"),
    ("auto", "slimgpt", 0.2, "the data-driven schedule (--schedule auto) instead of the log schedule"),
    ("auto", "slimgpt", 0.5, "the data-driven schedule at 50%"),
    ("slimgpt+bias", "slimgpt", 0.2, "FLAP's mean-shift bias compensation added to SlimGPT's OBS"),
    ("slimgpt+bias", "slimgpt", 0.5, "bias compensation at 50%"),
    ("auto+bias", "auto", 0.2, "bias compensation on top of the auto schedule"),
    ("auto+bias", "auto", 0.5, "bias compensation on top of the auto schedule at 50%"),
    ("flap-nobias", "flap", 0.2, "FLAP without its bias compensation"),
    ("slimgpt/gqa-group", "slimgpt", 0.2, "pruning whole KV groups (a KV head with its 3 query heads)"),
    ("auto/gqa-group", "auto", 0.2, "whole KV groups under the auto schedule"),
    ("slimgpt/damp0.001", "slimgpt", 0.2, "damping 0.001 instead of 0.01"),
    ("slimgpt/damp0.1", "slimgpt", 0.2, "damping 0.1 instead of 0.01"),
    ("slimgpt/c128x512", "slimgpt", 0.2, "128 x 512 calibration tokens (8x) instead of 32 x 256"),
    ("slimgpt/c64x2048", "slimgpt", 0.2, "64 x 2048 calibration tokens (16x)"),
    ("slimgpt/c16x2048", "slimgpt", 0.2, "16 x 2048 calibration tokens (4x, 8x longer windows)"),
    ("auto/c16x2048", "auto", 0.2, "16 x 2048 calibration for the auto schedule"),
    ("auto/relative", "auto", 0.2, "auto errors relative to the residual energy instead of gradient-weighted"),
    ("auto/output", "auto", 0.2, "auto errors relative to each module's output energy"),
    ("auto/relative/c16x2048", "auto/relative", 0.2, "16 x 2048 calibration for the residual-relative auto schedule"),
    ("auto+bias/c128x512", "auto+bias", 0.2, "128 x 512 calibration for auto + bias"),
    ("auto+bias/c128x512", "auto+bias", 0.5, "128 x 512 calibration for auto + bias at 50%"),
]


def hypotheses(aggs: dict) -> list[str]:
    out = ["| ratio | change | configuration vs reference | PPL@128 | PPL@2048 |", "|---|---|---|---|---|"]
    for v, ref, r, what in HYPOTHESES:
        a, b = _get(aggs, v, r), _get(aggs, ref, r)
        if not (a and b):
            continue
        cells = []
        for field, _ in PROTOCOLS:
            c = compare(a, b, field)
            cells.append(f"{_fmt(c['a'])} vs {_fmt(c['b'])} ({c['pct']:+.1f}%, {c['verdict']})" if c else "—")
        out.append(f"| {r:.0%} | {what} | {a.label} vs {b.label} | {cells[0]} | {cells[1]} |")
    return out if len(out) > 2 else []


def kv_heads_note(aggs: dict) -> list[str]:
    """How many KV heads each method drops (the KV-head hypothesis), from the recorded shapes."""
    lines = []
    for r in (0.2, 0.5):
        parts = []
        for v in ("slimgpt", "flap", "auto+bias", "slimgpt/flap-plan"):
            a = _get(aggs, v, r)
            if a and a.first("kv_kept"):
                kv = a.rows[0]["kv_kept"]
                lost = 3 * len(kv) - sum(kv)
                parts.append(f"{a.label} {lost} of {3 * len(kv)} KV heads (seed {a.seeds[0]})")
        if parts:
            lines.append(f"- {r:.0%}: KV heads removed: " + "; ".join(parts) + ". A KV head leaves with the last query "
                         "head that reads it (under --gqa query), and carries 73,728 parameters, like a query head.")
    return lines


def recovery(aggs: dict, dense: Agg | None) -> list[str]:
    out = ["| ratio | configuration | PPL@128 before → after | PPL@2048 before → after | @2048 × dense after | "
           "steps × windows × tokens | fine-tune wall s |", "|---|---|---|---|---|---|---|"]
    d = dense.mean("ppl2048") if dense else None
    for a in sorted(aggs.values(), key=_order):
        if not a.variant.endswith("+lora"):
            continue
        ft = a.rows[0].get("finetune") or {}
        st = ft.get("settings", {})
        x = f"{a.mean('ppl2048') / d:.2f}" if d else "—"
        b128 = math.exp(sum(math.log(r["ppl128_before"]) for r in a.rows) / a.n)
        b2048 = math.exp(sum(math.log(r["ppl2048_before"]) for r in a.rows) / a.n)
        out.append(f"| {a.ratio:.0%} | {a.label} ({a.n} seed{'s' if a.n > 1 else ''}) | {_fmt(b128)} → "
                   f"{_cell(a, 'ppl128')} | {_fmt(b2048)} → {_cell(a, 'ppl2048')} | {x} | "
                   f"{st.get('steps')} × {st.get('batch')} × {st.get('seqlen')} = {ft.get('tokens', 0):,} | "
                   f"{_fmt(ft.get('seconds'), 0)} |")
    return out if len(out) > 2 else []


def targets(aggs: dict, dense: Agg | None) -> list[str]:
    out = []
    if not dense:
        return out
    for name, (r, tuned, field, factor) in TARGETS.items():
        pool = [a for a in aggs.values() if a.ratio == r and a.mean(field) and
                (a.variant.endswith("+lora") == tuned) and
                (a.variant.replace("+lora", "") in FAMILY)]
        if not pool:
            out.append(f"- {name}: no SlimGPT-family row yet.")
            continue
        best = min(pool, key=lambda a: a.mean(field))
        x = best.mean(field) / dense.mean(field)
        worst = best.hi(field) / dense.mean(field)
        status = "**met**" if x <= factor else "**missed**"
        seeds = f" (worst of {best.n} seeds {worst:.2f} ×)" if best.n > 1 else " (one seed)"
        out.append(f"- {name}: {status} — best {best.label}: {_fmt(best.mean(field))} = {x:.2f} × dense{seeds}.")
    # FLAP target: a SlimGPT-family configuration below FLAP on both protocols beyond the seed spread
    f = _get(aggs, "flap", 0.2)
    if f:
        winners = [a for a in (_get(aggs, v, 0.2) for v in FAMILY) if a and all(
            compare(a, f, fl).get("verdict") == "better beyond the seed spread" for fl, _ in PROTOCOLS)]
        if winners:
            out.append("- 20%: below FLAP on both protocols beyond the seed spread: **met** by "
                       + ", ".join(w.label for w in winners) + ".")
        else:
            out.append("- 20%: a SlimGPT-family configuration below FLAP on both protocols beyond the seed spread: "
                       "**not met** (yet) — see the comparisons above.")
    return out


def auto_cost(aggs: dict) -> list[str]:
    lines = []
    for r in (0.2, 0.5):
        s, a = _get(aggs, "slimgpt", r), _get(aggs, "auto", r) or _get(aggs, "auto+bias", r)
        if s and a and s.values("prune_s") and a.values("prune_s"):
            ps, pa = (sum(x.values("prune_s")) / len(x.values("prune_s")) for x in (s, a))
            lines.append(f"- {r:.0%}: a prune with --schedule auto took {_fmt(pa, 0)} s against {_fmt(ps, 0)} s for "
                         f"the log schedule ({pa / ps:.2f} ×, wall clock on the shared machine, means over seeds).")
    return lines


def allocation_note(aggs: dict) -> list[str]:
    lines = []
    for r in (0.2, 0.5):
        parts = []
        for v in ("slimgpt", "auto+bias", "flap"):
            a = _get(aggs, v, r)
            if a and a.first("heads_kept"):
                h, f = a.rows[0]["heads_kept"], a.rows[0]["ffn_kept"]
                parts.append(f"{a.label}: heads kept {min(h)}–{max(h)} per layer ({sum(h)} in all), FFN kept "
                             f"{min(f)}–{max(f)} ({sum(f):,}); first/last layer FFN {f[0]}/{f[-1]}")
        if parts:
            lines.append(f"- {r:.0%} (seed 0): " + "; ".join(parts) + ".")
    return lines


# ----------------------------------------------------------------------------------------------
# Figures

def plot_sweep(aggs: dict, dense: Agg | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = ["slimgpt", "auto+bias", "flap", "slimgpt+lora", "auto+bias+lora", "flap+lora"]
    style = {"slimgpt": ("C0", "-"), "auto+bias": ("C2", "-"), "flap": ("C3", "-"),
             "slimgpt+lora": ("C0", "--"), "auto+bias+lora": ("C2", "--"), "flap+lora": ("C3", "--")}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, (field, proto) in zip(axes, PROTOCOLS):
        for v in series:
            pts = sorted((a.ratio, a) for a in aggs.values() if a.variant == v and a.mean(field))
            if not pts:
                continue
            xs = [100 * r for r, _ in pts]
            ys = [a.mean(field) for _, a in pts]
            err = [[a.mean(field) - a.lo(field) for _, a in pts], [a.hi(field) - a.mean(field) for _, a in pts]]
            c, ls = style[v]
            ax.errorbar(xs, ys, yerr=err, color=c, linestyle=ls, marker="o", capsize=3, label=LABELS[v])
        if dense and dense.mean(field):
            ax.axhline(dense.mean(field), color="k", linewidth=0.8, linestyle=":", label="dense")
        ax.set_yscale("log")
        ax.set_xlabel("pruned share of prunable decoder parameters (%)")
        ax.set_ylabel(f"WikiText-2 {proto} (log scale)")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle("SmolLM2-135M: PPL vs ratio (mean over seeds, bars = seed range; dashed = after LoRA recovery)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_allocation(aggs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 6), sharex=True)
    for col, r in enumerate((0.2, 0.5)):
        for v, c in (("slimgpt", "C0"), ("auto+bias", "C2"), ("auto", "C1"), ("flap", "C3")):
            a = _get(aggs, v, r)
            if not (a and a.first("heads_kept")):
                continue
            row = a.rows[0]
            axes[0, col].plot(row["heads_kept"], color=c, marker=".", label=a.label)
            axes[1, col].plot(row["ffn_kept"], color=c, marker=".", label=a.label)
        axes[0, col].set_title(f"{r:.0%}: query heads kept per layer (of 9)", fontsize=9)
        axes[1, col].set_title(f"{r:.0%}: FFN channels kept per layer (of 1536)", fontsize=9)
        axes[1, col].set_xlabel("layer")
        for ax in axes[:, col]:
            ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------

def write_doc(data: dict, doc: Path, img: Path) -> None:
    # the CLI command of each row from the variant table, not the string cached when it ran (here,
    # not at the top: study.py imports this module)
    from study import command

    st = data.get("settings", {})
    res = data.get("results", {})
    aggs = aggregate(res)
    dense = aggs.get(("dense", 0.0))
    img = Path(img)
    if img.suffix:                          # an old caller passing the PNG path
        img = img.parent
    have_plots = bool(res)
    if have_plots:
        plot_sweep(aggs, dense, img / "study_ppl.png")
        plot_allocation(aggs, img / "study_alloc.png")
    main_keys = ("dense", "slimgpt", "flap", "wanda-sp", "auto", "auto+bias")
    ft = st.get("lora", {})
    lines = [
        "# Quality study: SlimGPT, a data-driven schedule, recovery, and the baselines on SmolLM2-135M",
        "",
        f"*Generated by `benchmarks/study.py` / `benchmarks/study_report.py` from `out/study/results.json` "
        f"({len(res)} configurations). Every number and every sentence below is computed from that cache; "
        "edit the generator, not this file.*",
        "",
        "## Settings",
        "",
        f"- Model: {st.get('model', '')}; 30 layers, 9 query heads over 3 KV heads (GQA), FFN 1536.",
        f"- Calibration: {st.get('calibration', '')}; damping percdamp = {st.get('percdamp', '')}. A configuration's "
        "seeds differ only in the calibration windows drawn.",
        f"- PPL@128: {st.get('ppl128', '')} (the SlimGPT / LLM-Pruner protocol on a token budget).",
        f"- PPL@2048: {st.get('ppl2048', '')} (the Wanda / SparseGPT protocol on a token budget).",
        f"- torch {st.get('torch', '')}, CPU only ({st.get('cpus', '?')} cores shared with other jobs, so the times "
        "are wall clock and only indicative). PPL means are geometric means over the seeds, with [min–max].",
        "- Every pruned row removes the same number of parameters (the target ratio of the prunable decoder "
        "parameters, within one FFN channel), except FLAP and SlimGPT-with-FLAP's-counts, whose global threshold "
        "may remove KV heads the budget does not foresee (see the parameter column).",
        "- The faithful SlimGPT is the `slimgpt` row: the log-increasing IPR schedule and the paper's settings, still "
        "the default of `slimgpt prune`. Everything else named below is **beyond the paper**: `--schedule auto` "
        "(slimgpt/autoschedule.py), `--bias-compensation`, `--gqa group` with SlimGPT, larger calibration, and "
        "`slimgpt finetune` (LoRA recovery, slimgpt/finetune.py).",
        f"- LoRA recovery rows: {ft.get('steps')} steps × {ft.get('batch')} windows × {ft.get('seqlen')} tokens of the "
        f"C4 calibration pool (docs 1000-1999, last 2% held out for a validation loss), rank {ft.get('rank')}, peak "
        f"lr {ft.get('lr')}, on q/k/v/o/gate/up/down, merged after training; WikiText-2 is never trained on.",
        "",
        "## The data-driven schedule (`--schedule auto`)",
        "",
        "For every layer and module, greedy OBS removal on the dense model's calibration statistics gives an error "
        "curve (error after each removed head or block of 32 channels), weighted by the second moment of the loss "
        "gradient at the residual stream where the module writes (a K-FAC estimate of the loss increase); one "
        "global threshold over the convex hulls of all curves chooses each layer's heads and channels for the "
        "parameter budget, and SlimGPT's pipeline then prunes layer by layer as usual. See the module docstring of "
        "slimgpt/autoschedule.py. Its chosen counts are in the manifest (`ratios` = FFN channel fractions, "
        "`layers[i].heads_kept` etc.).",
        "",
        *auto_cost(aggs),
        "",
        "## Key results (means over calibration seeds)",
        "",
        results_table(aggs, dense, main_keys),
        "",
        *key_findings(aggs, dense),
        "",
        "## Targets",
        "",
        *targets(aggs, dense),
        "",
        "## Why FLAP led at 20%: the hypotheses, one number each",
        "",
        "Each row changes one thing against its reference configuration (same seeds where both have them).",
        "",
        *hypotheses(aggs),
        "",
        *kv_heads_note(aggs),
        "",
        "Per-layer allocations (first seed):",
        "",
        *allocation_note(aggs),
        "",
        "![allocation](img/study_alloc.png)" if have_plots else "",
        "",
        "## Recovery fine-tuning (LoRA)",
        "",
        *recovery(aggs, dense),
        "",
        "## PPL vs ratio",
        "",
        "![PPL vs ratio](img/study_ppl.png)" if have_plots else "",
        "",
        "## All configurations",
        "",
        results_table(aggs, dense),
        "",
        "## Reproducing a row",
        "",
        "Every row is one command of the study runner (cached, resumable), and the same model comes out of the CLI "
        "below; its PPL@128 and PPL@2048 are `slimgpt eval pruned --seqlen 128 --max-tokens 16384` and "
        "`slimgpt eval pruned --seqlen 2048 --max-tokens 16384`:",
        "",
        "```bash",
        "python benchmarks/study.py --list                      # the queue, done / to do, and each row's CLI command",
        "python benchmarks/study.py --only 'auto+bias@0.2#s1'   # one row (globs work: 'slimgpt@*#s*')",
        "python benchmarks/study_report.py                      # re-render this page from the cache",
        "```",
        "",
        "| configuration | CLI |",
        "|---|---|",
        *sorted({f"| {LABELS.get(r.get('variant'), r.get('variant'))} | `{command(r['variant'], r['ratio'], r['seed'])}` |"
                 for r in res.values() if r.get("seed", 0) == 0 and r.get("ratio") in (0.0, 0.2)}),
        "",
    ]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(x for x in lines if x is not None))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("out/study/results.json"))
    ap.add_argument("--img", type=Path, default=Path("docs/img"))
    ap.add_argument("--doc", type=Path, default=Path("docs/study.md"))
    ap.add_argument("--merge", type=Path, nargs="*", default=[],
                    help="other caches (e.g. from a parallel run) to fold into --cache")
    args = ap.parse_args(argv)
    data = load(args.cache)
    for other in args.merge:
        o = load(other)
        for k, v in o["results"].items():
            data["results"].setdefault(k, v)
        data["settings"] = data["settings"] or o["settings"]
    if args.merge:
        args.cache.write_text(json.dumps(data, indent=1))
    aggs = aggregate(data["results"])
    print(results_table(aggs, aggs.get(("dense", 0.0))))
    write_doc(data, args.doc, args.img)


if __name__ == "__main__":
    main()
