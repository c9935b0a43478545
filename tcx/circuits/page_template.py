"""The inline CSS and JS of circuit.html (see page.py): the script reads the embedded JSON, shows a
node's card on hover (a click pins it) and lights the node's edges."""

POSITIVE, NEGATIVE = "#2166ac", "#b2182b"  # link colours by the sign of the weight, in page and PNG

STYLE = """
body { font-family: sans-serif; margin: 1em; color: #222; }
h1 { font-size: 18px; white-space: pre-wrap; margin: 0 0 .3em; }
.summary, .legend { font-size: 13px; margin: .2em 0; }
.key { margin-right: 1em; white-space: nowrap; }
.key i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; border: 1px solid #555; }
main { display: flex; gap: 12px; align-items: flex-start; }
#plot { flex: 1; overflow: auto; border: 1px solid #ddd; max-height: 88vh; }
#card { width: 340px; flex: none; position: sticky; top: 0; max-height: 88vh; overflow: auto; font-size: 13px;
        border: 1px solid #ddd; padding: 6px 10px; }
#card h3 { margin: .2em 0; font-size: 15px; } #card h4 { margin: .6em 0 .2em; font-size: 13px; }
#card ul { margin: 0; padding-left: 1.2em; } .meta { color: #666; }
#card .ctx { font-family: monospace; white-space: pre-wrap; margin: .2em 0; }
.tok { white-space: pre; background: #eef; border-radius: 3px; padding: 0 3px; font-family: monospace; }
.grid { stroke: #eee; } .axis { font-size: 11px; fill: #444; } .tok.axis { font-family: monospace; }
.link { stroke-opacity: .3; }
svg.focus .link { stroke-opacity: .04; } svg.focus .link.on { stroke-opacity: .9; }
.node { stroke: #444; stroke-width: .7; cursor: pointer; } .node.top { stroke: #000; stroke-width: 2.5; }
.node.sel { stroke: #000; stroke-width: 2.5; }
""" + f".link.pos {{ stroke: {POSITIVE}; }} .link.neg {{ stroke: {NEGATIVE}; }}\n"

SCRIPT = """
const G = JSON.parse(document.getElementById('graph').textContent);
const svg = document.getElementById('graph-svg'), card = document.getElementById('card');
const edgesOf = new Map();
for (const l of svg.querySelectorAll('.link')) for (const id of [l.dataset.s, l.dataset.t]) {
  if (!edgesOf.has(id)) edgesOf.set(id, []);
  edgesOf.get(id).push(l);
}
let pinned = null, lit = [], selected = null;
const fmt = v => typeof v === 'number' ? v.toPrecision(3) : '—';
function add(parent, tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return parent.appendChild(e);
}
function list(title, rows, tokens) {
  if (!rows || !rows.length) return;
  add(card, 'h4', title);
  const ul = add(card, 'ul');
  for (const [label, score] of rows) {
    const li = add(ul, 'li');
    add(li, 'span', String(label), tokens ? 'tok' : undefined);
    add(li, 'span', ' ' + fmt(score));
  }
}
function light(el) {
  for (const l of lit) l.classList.remove('on');
  if (selected) selected.classList.remove('sel');
  selected = el; lit = el ? edgesOf.get(el.dataset.id) || [] : [];
  for (const l of lit) l.classList.add('on');
  if (el) el.classList.add('sel');
  svg.classList.toggle('focus', el !== null);
}
function show(el) {
  const id = el.dataset.id, n = G.nodes[id], c = G.cards[id.replace(/~\d+$/, '')];  // a path's route: node~k
  light(el);
  card.replaceChildren();
  add(card, 'h3', (c && c.title) || n.clerp || id);
  const tok = G.tokens[n.ctx_idx];
  add(card, 'p', `${n.feature_type} · layer ${n.layer} · position ${n.ctx_idx}` +
      (tok === undefined ? '' : ` (${JSON.stringify(tok)})`), 'meta');
  add(card, 'p', `activation ${fmt(n.activation)} · influence ${fmt(n.influence)}`, 'meta');
  if (n.clerp && (!c || c.title !== n.clerp)) add(card, 'p', n.clerp);
  if (!c) return;
  for (const line of c.lines || []) add(card, 'p', line);
  if (c.examples && c.examples.length) {
    add(card, 'h4', 'top activations (tcx-features)');
    for (const ex of c.examples) add(card, 'p', ex, 'ctx');
  }
  const de = c.de_embedding || {};
  list('de-embedding: promotes', de.top, true);
  list('de-embedding: suppresses', de.bottom, true);
  list('upstream', c.upstream);
  list('downstream', c.downstream);
}
for (const el of svg.querySelectorAll('.node')) {
  el.addEventListener('mouseenter', () => { if (!pinned) show(el); });
  el.addEventListener('click', e => { e.stopPropagation(); pinned = pinned === el ? null : el; show(el); });
}
svg.addEventListener('click', () => { pinned = null; light(null); });
svg.addEventListener('mouseleave', () => { if (!pinned) light(null); });
"""
