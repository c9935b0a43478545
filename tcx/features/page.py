"""features.html: every feature of one dictionary in one self-contained file (no network).

A list on the left (search by index, sort by index or frequency, hide dead or dense features) and
the selected feature on the right: its histogram, top contexts coloured per token by activation
(the peak token boxed, the value on hover), the activation bands with their shares and samples,
its de-embedding and logit effects, and its explanation with the automatic scores.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tcx.io import write_text

STYLE = """
body{font:14px system-ui,sans-serif;margin:0;display:flex;height:100vh}
#side{width:260px;border-right:1px solid #ccc;display:flex;flex-direction:column}
#side .controls{padding:8px;border-bottom:1px solid #ccc}
#list{overflow-y:auto;flex:1;margin:0;padding:0;list-style:none}
#list li{padding:2px 8px;cursor:pointer;font-family:monospace}
#list li.sel{background:#dbe8ff} #list li.dead{color:#999}
#feature{flex:1;overflow-y:auto;padding:12px 20px}
.ctx{font-family:monospace;white-space:pre-wrap;margin:2px 0;line-height:1.6}
.tok{border-radius:2px} .peak{outline:1px solid #333}
table{border-collapse:collapse} td,th{padding:2px 8px;text-align:left;vertical-align:top}
.meta{color:#555} svg rect{fill:#4a78c2}
"""

SCRIPT = r"""
const doc = JSON.parse(document.getElementById('data').textContent);
const vocab = doc.vocab, feats = doc.features;
const list = document.getElementById('list'), panel = document.getElementById('feature');
let current = null;
function esc(s) { return s.replace(/&/g,'&amp;').replace(/</g,'&lt;').replace(/>/g,'&gt;'); }
function tokText(id) { const t = vocab[id]; return t === undefined ? '?' : t; }
function context(c, max) {
  let out = '';
  c.tokens.forEach((id, i) => {
    const a = c.acts[i], alpha = a && max > 0 ? Math.min(1, a / max) : 0;
    out += `<span class="tok${i === c.peak ? ' peak' : ''}" style="background:rgba(255,120,0,${alpha.toFixed(3)})"` +
           ` title="${a === null ? '' : a}">${esc(tokText(id))}</span>`;
  });
  return `<div class="ctx">${out}</div>`;
}
function histogram(h) {
  const W = 360, H = 80, n = h.counts.length, top = Math.max(...h.counts, 1);
  let bars = '';
  h.counts.forEach((c, i) => { const y = H * c / top;
    bars += `<rect x="${i * W / n}" y="${H - y}" width="${W / n - 1}" height="${y}">` +
            `<title>${(i * h.width).toPrecision(3)}` +
            `–${((i + 1) * h.width).toPrecision(3)}: ${c}</title></rect>`; });
  return `<svg width="${W}" height="${H + 14}" id="hist">${bars}<text x="0" y="${H + 12}" font-size="10">0</text>` +
         `<text x="${W}" y="${H + 12}" font-size="10" text-anchor="end">${(n * h.width).toPrecision(3)}</text></svg>`;
}
function ends(m, title) {
  if (!m) return '';
  const cell = xs => xs.map(([id, v]) => `${esc(JSON.stringify(tokText(id)))} ${v}`).join('<br>');
  return `<h3>${title}</h3><table><tr><th>top</th><th>bottom</th></tr>` +
         `<tr><td>${cell(m.top)}</td><td>${cell(m.bottom)}</td></tr></table>`;
}
function show(f) {
  current = f.index;
  document.querySelectorAll('#list li').forEach(li => li.classList.toggle('sel', +li.dataset.index === f.index));
  if (f.dead) { panel.innerHTML = `<h2>feature ${f.index}</h2><p class="dead-note">dead: it never fired in the ` +
    `${doc.summary.read_tokens} read tokens, so there is nothing to show.</p>`; return; }
  const fmt = x => x === null || x === undefined ? '–' : x.toFixed(3);
  let s = `<h2>feature ${f.index}</h2><p class="meta">frequency ${f.frequency.toExponential(2)} (${f.fired} of ` +
    `${doc.summary.read_tokens} tokens) · max ${f.max.toPrecision(4)}${f.dense ? ' · dense' : ''}</p>` +
    `<p>explanation: ${f.explanation.map(t => esc(JSON.stringify(tokText(t)))).join(', ')}` +
    ` · detection ${fmt(f.detection)}` +
    ` · fuzzing ${fmt(f.fuzzing)} · context-free ${fmt(f.context_free)}</p>` +
    `<p class="meta">non-zero activations</p>` + histogram(f.histogram) +
    `<h3>top activations</h3><div id="top">${f.top.map(c => context(c, f.max)).join('')}</div>` +
    `<h3>activation bands</h3><table id="bands">` + f.bands.slice().reverse().map(b =>
      `<tr><td>${b.lo.toPrecision(3)}–${b.hi.toPrecision(3)}</td><td>${(100 * b.share).toFixed(1)}%</td>` +
      `<td>${b.examples.map(c => context(c, f.max)).join('')}</td></tr>`).join('') + '</table>' +
    ends(f.de_embedding, 'de-embedding (input tokens, W_E · W_enc)') + ends(f.logits, 'logit effects (W_dec · W_U)');
  panel.innerHTML = s;
}
function render() {
  const q = document.getElementById('search').value.trim(), sort = document.getElementById('sort').value;
  const hideDead = document.getElementById('hide-dead').checked;
  const hideDense = document.getElementById('hide-dense').checked;
  let shown = feats.filter(f => (!q || String(f.index).startsWith(q)) && !(hideDead && f.dead) &&
                                !(hideDense && f.dense));
  if (sort === 'freq-desc') shown.sort((a, b) => b.frequency - a.frequency);
  if (sort === 'freq-asc') shown.sort((a, b) => a.frequency - b.frequency);
  list.innerHTML = shown.map(f => `<li data-index="${f.index}" class="${f.dead ? 'dead' : ''}">${f.index}` +
    ` <span class="meta">${f.dead ? 'dead' : f.frequency.toExponential(1)}</span></li>`).join('');
  list.querySelectorAll('li').forEach(li => li.onclick = () => show(feats.find(f => f.index === +li.dataset.index)));
  if (shown.length && !shown.some(f => f.index === current)) show(shown[0]);
}
for (const id of ['search', 'sort', 'hide-dead', 'hide-dense'])
  document.getElementById(id).addEventListener('input', render);
render();
"""


def write_page(doc: dict[str, Any], data: str, path: Path) -> None:
    """`data`: `doc` as JSON."""
    s = doc["summary"]
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    title = f"{doc['dictionary']}: {doc['model']} layer {doc['layer']} ({doc['input_hook']} → {doc['target_hook']})"
    data = data.replace("<", "\\u003c")  # nothing in the JSON can close or open a tag
    write_text(path, f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<div id="side"><div class="controls"><b>{html.escape(doc['dictionary'])}</b><br>
<span class="meta">{s['live']} live / {s['features']} · detection {fmt(s['detection'])} · fuzzing {fmt(s['fuzzing'])}
· context-free {fmt(s['context_free'])}</span><br>
<input id="search" placeholder="feature index" size="12">
<select id="sort"><option value="index">by index</option><option value="freq-desc">most frequent</option>
<option value="freq-asc">least frequent</option></select><br>
<label><input type="checkbox" id="hide-dead"> hide dead</label>
<label><input type="checkbox" id="hide-dense"> hide dense</label></div>
<ul id="list"></ul></div>
<div id="feature"><p class="meta">{html.escape(title)}</p></div>
<script type="application/json" id="data">{data}</script>
<script>{SCRIPT}</script></body></html>
""")
