"""`report --html`: one self-contained page (inline CSS and SVG, no script, nothing fetched) that shows where
every byte of a packed model goes, how each stage moved the accuracy, and what the sensitivity scans saw.

Everything read from a file (layer names, stage configs) is HTML-escaped; the charts come from charts.py,
the same figures as the PNG plots. The same report gives the same page bytes (no timestamp, fixed SVG ids).
"""
from __future__ import annotations

import html
import json

from . import __version__
from .charts import PARTS, history_figure, is_fp32, layer_figure, sensitivity_figure, svg_text

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px auto;max-width:1180px;
color:#1d2330;background:#fff;padding:0 16px;line-height:1.4}
h1{font-size:22px;margin:0 0 4px}h3{font-size:14px;margin:18px 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}
.sub{color:#556;font-size:13px}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{border:1px solid #dde;border-radius:6px;padding:8px 14px;min-width:120px;background:#f7f8fb}
.card b{display:block;font-size:20px}.card span{font-size:12px;color:#556}
.bar{display:flex;height:26px;border-radius:4px;overflow:hidden;border:1px solid #ccd;margin:6px 0}
.bar div{height:100%}.legend{font-size:12px;color:#334}.legend i{display:inline-block;width:11px;height:11px;margin:0 4px 0 12px;
vertical-align:-1px}table{border-collapse:collapse;font-size:12.5px;width:100%}
th,td{padding:3px 7px;border-bottom:1px solid #e6e8ef;text-align:right;white-space:nowrap}
th{position:sticky;top:0;background:#eef1f7;text-align:right}td.l,th.l{text-align:left}tr.fp td{color:#667;background:#fafafa}td.cfg{white-space:normal;text-align:left;word-break:break-word}
tr.total td{font-weight:bold;border-top:2px solid #99a}.scroll{max-height:640px;overflow:auto;border:1px solid #e6e8ef}
svg{max-width:100%;height:auto}.note{font-size:13px;color:#556}.warn{color:#a33}code{font-size:12px}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def _composition(rep: dict) -> str:
    """The whole file as one bar: every part's share, the container included."""
    totals = {key: sum(r[key] for r in rep["layers"]) for key, _, _ in PARTS}
    parts = [(totals[k], label, color) for k, label, color in PARTS] + [(rep["container_bytes"], "container", "#d4c24a")]
    size = max(rep["packed_bytes"], 1)
    bar = "".join(f'<div style="width:{100 * n / size:.3f}%;background:{c}" title="{_e(lab)}: {n:,} bytes"></div>'
                  for n, lab, c in parts if n)
    legend = "".join(f'<i style="background:{c}"></i>{_e(lab)} {n:,} B ({100 * n / size:.1f} %)' for n, lab, c in parts if n)
    return f'<div class="bar">{bar}</div><div class="legend">{legend}</div>'


def _layer_table(rep: dict) -> str:
    cols = ["layer", "params", "nonzeros", "sparsity", "scheme", "bits", "codes", "index", "codebook", "fp", "bytes", "share", "bits/w",
            "× smaller"]
    head = "".join(f'<th class="{"l" if c in ("layer", "scheme") else ""}">{_e(c)}</th>' for c in cols)
    body = []
    for r in rep["layers"]:
        sparsity = 1 - r["nonzeros"] / max(r["params"], 1)
        ratio = f"{4 * r['params'] / r['bytes']:.1f}" if r["bytes"] else "–"
        cells = [r["layer"], f"{r['params']:,}", f"{r['nonzeros']:,}", f"{100 * sparsity:.1f} %", r["scheme"], r["bits"],
                 f"{r['codes']:,}", f"{r['index']:,}", f"{r['tables']:,}", f"{r['fp']:,}", f"{r['bytes']:,}", f"{100 * r['share']:.1f} %",
                 f"{r['bits_per_weight']:.2f}", ratio]
        tds = "".join(f'<td class="{"l" if i in (0, 4) else ""}">{_e(c)}</td>' for i, c in enumerate(cells))
        body.append(f'<tr class="{"fp" if is_fp32(r) else ""}">{tds}</tr>')
    n = rep["packed_bytes"]
    body.append(f'<tr><td class="l">(container)</td>{"<td></td>" * 9}<td>{rep["container_bytes"]:,}</td>'
                f'<td>{100 * rep["container_bytes"] / max(n, 1):.1f} %</td><td></td><td></td></tr>')
    sparsity = 1 - rep["nonzeros"] / max(rep["params"], 1)
    body.append(f'<tr class="total"><td class="l">total</td><td>{rep["params"]:,}</td><td>{rep["nonzeros"]:,}</td>'
                f'<td>{100 * sparsity:.1f} %</td>{"<td></td>" * 6}<td>{n:,}</td><td>100 %</td><td>{rep["bits_per_weight"]:.2f}</td>'
                f'<td>{rep["ratio"]:.1f}</td></tr>')
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _config_text(config) -> str:
    if not isinstance(config, dict):
        return ""
    kept = {k: v for k, v in config.items() if v not in (None, [], {}, "", False)}
    text = ", ".join(f"{k}={json.dumps(v, separators=(',', ':'), default=str)}" for k, v in kept.items())
    return text if len(text) <= 160 else text[:157] + "…"


def history_rows(history: list) -> list[dict]:
    """One row per stage: what ran, with what, and the figures it reported (accuracy on the test split)."""
    rows = []
    for entry in history or []:
        if not isinstance(entry, dict):
            continue
        result = entry.get("result") if isinstance(entry.get("result"), dict) else {}
        acc = result.get("accuracy")
        rows.append({"stage": str(entry.get("stage", "?")), "config": _config_text(entry.get("config")),
                     "accuracy": float(acc) if isinstance(acc, (int, float)) else None,
                     "sparsity": result.get("overall_sparsity"), "bytes": result.get("bytes") or result.get("packed_bytes"),
                     "note": result.get("warning") or result.get("status") or ""})
    return rows


def _history_section(history: list | None, source: str | None) -> str:
    if not history:
        return ('<p class="note">No stage history: a .dnc keeps only its final metrics. Pass <code>--history CKPT</code> '
                "(the checkpoint it was packed from) to show every stage.</p>")
    rows = history_rows(history)
    trs = []
    for i, r in enumerate(rows, 1):
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.2f}"
        sp = f"{100 * r['sparsity']:.1f} %" if isinstance(r["sparsity"], (int, float)) else ""
        size = f"{r['bytes']:,}" if isinstance(r["bytes"], int) else ""
        note = f'<br><span class="warn">{_e(r["note"])}</span>' if r["note"] else ""
        trs.append(f'<tr><td>{i}</td><td class="l">{_e(r["stage"])}</td><td class="cfg"><code>{_e(r["config"])}</code>{note}</td>'
                   f"<td>{acc}</td><td>{sp}</td><td>{size}</td></tr>")
    out = f'<p class="note">From {_e(source)}.</p>' if source else ""
    measured = [r for r in rows if r["accuracy"] is not None]
    if len(measured) >= 2:
        out += svg_text(history_figure(measured))
    out += ('<table><thead><tr><th>#</th><th class="l">stage</th><th class="l">config</th><th>test accuracy %</th>'
            f'<th>sparsity</th><th>bytes</th></tr></thead><tbody>{"".join(trs)}</tbody></table>')
    return out


def sensitivity_scans(history: list | None) -> list[tuple[str, dict, dict | None, str]]:
    """(title, curves, chosen, x label) for every scan the history kept: auto pruning and joint's bit scan."""
    scans = []
    for i, entry in enumerate(history or [], 1):
        result = entry.get("result") if isinstance(entry, dict) and isinstance(entry.get("result"), dict) else {}
        auto = result.get("auto") if isinstance(result.get("auto"), dict) else {}
        if isinstance(auto.get("curves"), dict) and auto["curves"]:
            scans.append((f"Stage {i} ({entry.get('stage')}): pruning sensitivity, chosen on {auto.get('chosen_on', 'validation')}",
                          auto["curves"], auto.get("targets"), "sparsity of this layer alone"))
        scan = result.get("scan")
        if isinstance(scan, dict) and scan:
            least = {n: min(r[0] for r in rows) for n, rows in scan.items() if rows}
            curves = {n: [[r[1], r[2]] for r in rows if r[0] == least[n]] for n, rows in scan.items() if rows}
            chosen = {r["layer"]: r["bits"] for r in result.get("layers", []) if isinstance(r, dict) and "bits" in r}
            scans.append((f"Stage {i} ({entry.get('stage')}): quantization sensitivity (codebook, unpruned), chosen on "
                          f"{result.get('chosen_on', 'validation')}", curves, chosen, "bits of this layer alone"))
    return scans


def render_html(rep: dict, history: list | None = None, history_source: str | None = None) -> str:
    """The whole page as a string."""
    metrics = rep.get("metrics") or {}
    cards = [_card(f"{rep['ratio']:.1f}×", "smaller than fp32"), _card(f"{rep['packed_bytes']:,}", "bytes packed"),
             _card(f"{rep['fp32_bytes']:,}", "bytes fp32 safetensors"), _card(f"{rep['bits_per_weight']:.2f}", "bits per weight, all in"),
             _card(f"{100 * (1 - rep['nonzeros'] / max(rep['params'], 1)):.1f} %", "sparsity"), _card(f"{rep['params']:,}", "parameters")]
    if isinstance(metrics.get("accuracy"), (int, float)):
        cards.append(_card(f"{metrics['accuracy']:.2f} %", "test accuracy (recorded)"))
    scans = "".join(f"<h3>{_e(title)}</h3>{svg_text(sensitivity_figure(curves, chosen, xlabel, title='Accuracy drop per layer'))}"
                    for title, curves, chosen, xlabel in sensitivity_scans(history))
    title = f"dnncompress report: {rep.get('arch') or 'model'}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(title)}</title><style>{CSS}</style></head><body>
<h1>{_e(title)}</h1>
<div class="sub">{_e(rep['file'])} · entropy coding: {_e(rep.get('entropy') or 'none')} · dnncompress {_e(__version__)}</div>
<div class="cards">{"".join(cards)}</div>
<h2>Where the bytes go</h2>{_composition(rep)}
{svg_text(layer_figure(rep))}
<h2>Per layer</h2><p class="note">In model order. The ratio of a layer is its fp32 bytes over its packed bytes; the container
(safetensors header, spec, digest, padding) belongs to the file, not to a layer.</p>{_layer_table(rep)}
<h2>History</h2>{_history_section(history, history_source)}
{f"<h2>Sensitivity</h2>{scans}" if scans else ""}
</body></html>
"""
