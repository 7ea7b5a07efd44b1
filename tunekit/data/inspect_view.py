"""How `tunekit data inspect` shows its report: warnings, a text summary, a histogram PNG."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from tunekit import atomic
from tunekit.data.stats import length_histogram


def short(text: str, n: int = 70) -> str:
    one = " ".join(text.split())
    return one if len(one) <= n else one[: n - 3] + "..."


def render_text(report: dict) -> str:
    """A human-readable summary: the warnings first, then every measurement."""
    r, s = report, report["settings"]
    out = [f"{r['source']}  (model {r['model']}, max_length {s['max_length']}, train_on {s['train_on']})", ""]
    out += ["Warnings:"] + [f"  ! {x}" for x in r["warnings"]] if r["warnings"] else ["No warnings."]
    rec = r["records"]
    out += ["", f"Records: {rec['read']:,} read, {rec['valid']:,} valid ({rec['conversations']:,} conversations, "
                f"{rec['documents']:,} documents), {rec['distinct']:,} distinct, {rec['rejected']:,} rejected"]
    out += [f"  rejected {k}: {v:,}" for k, v in r["rejects"]["by_reason"].items()]
    out += [f"    {e['where']}  {e['reason']}: {e['detail']}" for e in r["rejects"]["examples"]]
    out += [f"Formats: {', '.join(f'{k} {v:,}' for k, v in r['formats'].items())}"] + [f"  note: {n}" for n in r["notes"]]
    t = r["turns"]
    if t["count"]:
        out.append(f"Assistant turns per conversation: p50 {t['p50']}, p90 {t['p90']}, max {t['max']}; "
                   f"{t['multi_turn']:,} multi-turn")
    out += ["", f"{'Tokens':<34}{'count':>9}{'p50':>7}{'p90':>7}{'p99':>7}{'max':>7}{'total':>12}"]
    rows = [(f"  {k} (content)", v) for k, v in r["tokens"]["by_role"].items()]
    rows.append(("  example (rendered by template)", r["tokens"]["example"]))
    for label, v in rows:
        if v["count"]:
            out.append(f"{label:<34}{v['count']:>9,}{v['p50']:>7}{v['p90']:>7}{v['p99']:>7}{v['max']:>7}{v['total']:>12,}")
    out.append(f"  over max_length {s['max_length']}: {r['tokens']['over_max_length']['count']:,}"
               + (f"; documents to be chunked: {r['tokens']['documents_chunked']:,}" if rec["documents"] else ""))
    sup, pe = r["supervised"], r["per_epoch"]
    how = f"estimated from a random sample of {sup['sample']:,} conversations" if sup["estimated"] else "exact"
    per = sup["per_example"]
    out.append(f"Supervised tokens ({sup['train_on']}, {how}): {sup['total']:,} = {sup['share']:.0%} of all tokens"
               + (f"; per conversation p50 {per['p50']}, p90 {per['p90']}, max {per['max']}" if per["count"] else ""))
    epochs = f"{pe['epochs']:g} epoch" + ("" if pe["epochs"] == 1 else "s")
    out.append(f"Per epoch: {pe['tokens']:,} tokens, {pe['supervised']:,} supervised; for {epochs}: "
               f"{pe['tokens_all_epochs']:,} tokens, {pe['supervised_all_epochs']:,} supervised "
               "(all valid records; prepare drops duplicates and over-long ones and holds some out)")
    out.append("")
    for kind, label in (("exact", "Exact duplicates"), ("near", f"Near duplicates (Jaccard >= {r['duplicates']['near']['threshold']})")):
        d = r["duplicates"][kind]
        out.append(f"{label}: {d['clusters']:,} clusters, {d['extra_copies']:,} extra copies"
                   + (f"; largest {', '.join(map(str, d['largest']))}" if d["largest"] else ""))
        out += [f"    {e['pair'][0]} ~ {e['pair'][1]}" + (f" ({e['similarity']})" if "similarity" in e else "")
                + f"  (cluster of {e['size']})" for e in d["examples"]]
    sp = r["system_prompts"]
    out.append(f"System prompts: {sp['with']:,} of {r['records']['conversations']:,} conversations have one; "
               f"{sp['distinct']:,} distinct")
    out += [f"  {p['count']:>7,} x \"{short(p['text'])}\"" for p in sp["top"]]
    out.append("Most repeated answers (distinct conversations):" + ("" if r["answers"]["most_repeated"] else " none"))
    out += [f"  {a['count']:>7,} x \"{short(a['text'])}\"" for a in r["answers"]["most_repeated"]]
    return "\n".join(out) + "\n"


def render_sources(report: dict) -> str:
    """A data.mix: one line per source (a table), then each source's full summary."""
    out = [f"data.mix: {len(report['sources'])} sources (model {report['model']}); the first is the anchor", "",
           f"{'source':<40}{'weight':>8}{'share':>7}{'read':>9}{'valid':>9}{'distinct':>9}{'rejected':>9}{'tokens/epoch':>14}"]
    for r in report["sources"]:
        rec = r["records"]
        name = r["path"] if len(r["path"]) <= 39 else "..." + r["path"][-36:]  # the file name is the telling end
        out.append(f"{name:<40}{r['weight']:>8g}{r['weight_share']:>7.0%}{rec['read']:>9,}{rec['valid']:>9,}"
                   f"{rec['distinct']:>9,}{rec['rejected']:>9,}{r['per_epoch']['tokens']:>14,}")
    out.append("(share: of training rows, by weight; prepare reports the rows each source gave after the split)")
    return "\n".join(out) + "\n\n" + "\n".join(render_text(r) for r in report["sources"])


def histogram_png(data: dict | Sequence[int], out_path: str | Path, max_length: int = 0) -> Path:
    """Histogram of rendered example lengths, from a report (or its histogram) or from raw
    lengths; a dashed line at max_length; log-scaled counts when a few bins dwarf the rest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(data, dict):
        hist = data["tokens"]["histogram"] if "tokens" in data else data
    else:
        hist = length_histogram(list(data), max_length)
    edges, counts, limit = hist["edges"], hist["counts"], hist.get("max_length") or 0
    over, width = hist.get("overflow", 0), edges[1] - edges[0]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    if sum(counts) + over:
        ax.bar(edges[:-1], counts, width=width, align="edge", color="C0", edgecolor="white", linewidth=0.3)
        if over:
            ax.bar([edges[-1] + width], [over], width=width, align="edge", color="C1",
                   label=f"longer than {edges[-1]} (up to {hist['longest']})")
        nonzero = [c for c in [*counts, over] if c]
        if max(nonzero) >= 20 * float(np.median(nonzero)):  # skewed: rare lengths would be invisible
            ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no valid examples", ha="center", va="center", transform=ax.transAxes)
    if limit:
        ax.axvline(limit, color="C3", linestyle="--", label=f"max_length {limit}")
    if limit or over:
        ax.legend()
    ax.set_xlabel("tokens per example (rendered with the model's chat template)")
    ax.set_ylabel("examples")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic.write_bytes(out_path, buf.getvalue())
    return Path(out_path)
