"""compare.html: one file, every image inline, a sortable and filterable table; opens from disk."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from tcx.io import write_text

SCRIPT = """
const rows = JSON.parse(document.getElementById('data').textContent);
const columns = JSON.parse(document.getElementById('columns').textContent);
let sortKey = null, ascending = true;
function passes(r, expr) {
  if (!expr.trim()) return true;
  return expr.split(',').every(c => {
    const m = c.trim().match(/^([\\w.]+)\\s*(<=|>=|==|!=|<|>)\\s*([-+\\d.eE]+)$/);
    if (!m) return true;
    const v = r[m[1]], x = parseFloat(m[3]);
    if (typeof v !== 'number') return false;
    return {'<=': v <= x, '>=': v >= x, '==': v == x, '!=': v != x, '<': v < x, '>': v > x}[m[2]];
  });
}
function render() {
  const expr = document.getElementById('filter').value;
  let shown = rows.filter(r => passes(r, expr));
  if (sortKey) shown.sort((a, b) => {
    const x = a[sortKey], y = b[sortKey];
    if (x === undefined) return 1; if (y === undefined) return -1;
    return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
  });
  const body = document.querySelector('#runs tbody');
  body.innerHTML = '';
  for (const r of shown) {
    const tr = document.createElement('tr');
    for (const c of columns) {
      const td = document.createElement('td');
      const v = r[c];
      td.textContent = typeof v === 'number' ? (Number.isInteger(v) ? v : v.toPrecision(4)) : (v ?? '');
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  document.getElementById('count').textContent = shown.length + ' of ' + rows.length + ' runs';
}
document.querySelectorAll('#runs th').forEach(th => th.addEventListener('click', () => {
  const key = th.dataset.key;
  ascending = sortKey === key ? !ascending : true;
  sortKey = key;
  document.querySelectorAll('#runs th').forEach(h => h.classList.remove('asc', 'desc'));
  th.classList.add(ascending ? 'asc' : 'desc');
  render();
}));
document.getElementById('filter').addEventListener('input', render);
render();
"""

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { cursor: pointer; background: #f1f3f6; }
th.asc::after { content: ' ▲'; } th.desc::after { content: ' ▼'; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; } .grid figure { width: 320px; margin: 0; font-size: 11px; }
"""


def inline(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def page(rows: list[dict[str, Any]], columns: list[str], images: list[Path], skipped: dict[str, str],
         path: Path) -> None:
    data = json.dumps(rows, default=str).replace("</", "<\\/")
    heads = "".join(f'<th data-key="{html.escape(c)}">{html.escape(c)}</th>' for c in columns)
    pictures = "".join(f'<img alt="{p.stem}" src="{inline(p)}">' for p in images if p.is_file())
    densities = "".join(
        f'<figure><img alt="density" src="{inline(Path(r["run"]) / "feature_density.png")}">'
        f"<figcaption>{html.escape(Path(r['run']).name)}</figcaption></figure>"
        for r in rows if (Path(r["run"]) / "feature_density.png").is_file())
    left_out = "".join(f"<li>{html.escape(d)}: {html.escape(e)}</li>" for d, e in skipped.items())
    write_text(path, f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tcx compare</title><style>{STYLE}</style></head><body>
<h1>tcx compare</h1>
{pictures}
<h2>Runs</h2>
<p><input id="filter" placeholder="filter, e.g. l0 <= 32" size="40"> <span id="count"></span>
 (click a column to sort)</p>
<table id="runs"><thead><tr>{heads}</tr></thead><tbody></tbody></table>
<h2>Feature densities</h2><div class="grid">{densities or "<p>none recorded</p>"}</div>
{f"<h2>Left out</h2><ul>{left_out}</ul>" if left_out else ""}
<script type="application/json" id="data">{data}</script>
<script type="application/json" id="columns">{json.dumps(columns)}</script>
<script>{SCRIPT}</script>
</body></html>
""")
