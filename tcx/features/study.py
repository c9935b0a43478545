"""The paper's blind interpretability study as a workflow.

    sheet = make_study(cfg, out)   # samples live features from each dictionary's features.json,
                                   # shuffles them into one anonymous sheet.html + key.json
    table = score(answers.json)    # unblinds a filled-in sheet: yes / maybe / no and context-free
                                   # counts per dictionary, with a 95% Wilson interval

The sheet shows each feature only as contexts with tokens shaded in five levels: no feature index, no
dictionary, no activation value. The key stays beside it; the answers name the key file and the study.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any

from tcx.errors import ConfigError
from tcx.features.config import StudyConfig
from tcx.io import write_json, write_text

LABELS = ("yes", "maybe", "no")
LEVELS = 5


def load_features(run: str) -> dict[str, Any]:
    path = Path(run)
    path = path / "features.json" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"{run} has no features.json: run `tcx-features run={run}` first (the study samples "
                          "from what it wrote).")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}): rerun tcx-features on it.") from None


def eligible(doc: dict[str, Any], cfg: StudyConfig) -> list[dict[str, Any]]:
    """Live features in the paper's sense: log10 frequency above the cut and enough activating tokens."""
    return [f for f in doc["features"] if not f["dead"] and f["fired"] >= cfg.min_activating
            and math.log10(f["frequency"]) > cfg.min_log_frequency]


def _shown(feature: dict[str, Any], doc: dict[str, Any], n: int) -> list[list[list]]:
    """Up to n contexts, top activations then band samples from the highest band down, as
    [token text, level 0-4] pairs: the level is all the sheet says about an activation."""
    chosen, seen = [], set()
    for c in feature["top"][: (n + 1) // 2] + [c for band in reversed(feature["bands"]) for c in band["examples"]]:
        key = (tuple(c["tokens"]), c["peak"])  # the top band's samples are often top contexts too
        if key not in seen and len(chosen) < n:
            seen.add(key)
            chosen.append(c)
    out = []
    for c in chosen:
        levels = [0 if not a else min(LEVELS - 1, math.ceil(a / feature["max"] * (LEVELS - 1))) for a in c["acts"]]
        out.append([[doc["vocab"].get(str(t), "?"), level] for t, level in zip(c["tokens"], levels, strict=True)])
    return out


def make_study(cfg: StudyConfig, out: Path) -> dict[str, Any]:
    if len(cfg.runs) < 1:
        raise ConfigError("runs=[...] is empty: name the dictionaries to compare, e.g. runs=[<transcoder>, <sae>].")
    docs = [load_features(r) for r in cfg.runs]
    models = {d["model"] for d in docs}
    if len(models) > 1:
        listing = ", ".join(f"{r} ({d['model']})" for r, d in zip(cfg.runs, docs, strict=True))
        raise ConfigError(f"the study's dictionaries belong to different models ({listing}): compare "
                          "dictionaries of one model.")
    rng = random.Random(cfg.seed)
    rows = []
    for run, doc in zip(cfg.runs, docs, strict=True):
        pool = eligible(doc, cfg)
        if len(pool) < cfg.n:
            raise ConfigError(f"{run} has {len(pool)} live features (log10 frequency > {cfg.min_log_frequency}, at "
                              f"least {cfg.min_activating} activating tokens), fewer than n={cfg.n}: lower n, or "
                              "read more tokens with tcx-features max_tokens=.")
        rows += [(run, doc, f) for f in rng.sample(pool, cfg.n)]
    rng.shuffle(rows)
    ids = [f"r{i + 1:03d}" for i in range(len(rows))]
    key_rows = {rid: {"run": run, "dictionary": doc["dictionary"], "feature": f["index"]}
                for rid, (run, doc, f) in zip(ids, rows, strict=True)}
    study = hashlib.sha256(json.dumps(key_rows, sort_keys=True).encode()).hexdigest()[:16]
    out.mkdir(parents=True, exist_ok=True)
    key_file = (out / "key.json").resolve()
    write_json(key_file, {"study": study, "runs": list(cfg.runs), "rows": key_rows, "seed": cfg.seed, "n": cfg.n})
    sheet = [{"row": rid, "contexts": _shown(f, doc, cfg.contexts)} for rid, (_, doc, f) in zip(ids, rows, strict=True)]
    write_text(out / "sheet.html", _sheet_html(study, str(key_file), sheet))
    return {"study": study, "sheet": out / "sheet.html", "key": key_file, "rows": len(sheet)}


def _sheet_html(study: str, key_file: str, rows: list[dict[str, Any]]) -> str:
    data = json.dumps({"study": study, "key_file": key_file, "rows": rows}).replace("<", "\\u003c")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tcx blind study {study}</title><style>
body{{font:14px system-ui,sans-serif;max-width:1100px;margin:20px auto}} .row{{border-top:1px solid #ccc;padding:8px 0}}
.ctx{{font-family:monospace;white-space:pre-wrap;line-height:1.6}} .l1{{background:#ffe0c0}} .l2{{background:#ffc080}}
.l3{{background:#ffa040}} .l4{{background:#ff7a00}}</style></head><body>
<h1>Blind feature study</h1><p>Each row is one feature, shown by contexts where it fires (darker = stronger).
Is it interpretable? Tick <i>context-free</i> when it fires on a token regardless of context. Save writes
answers.json: keep it, then run <code>tcx-features score answers.json</code>.</p>
<div id="rows"></div><button id="save">save answers.json</button> <span id="progress"></span>
<script type="application/json" id="data">{data}</script>
<script>
const sheet = JSON.parse(document.getElementById('data').textContent);
const esc = s => s.replace(/&/g,'&amp;').replace(/</g,'&lt;');
document.getElementById('rows').innerHTML = sheet.rows.map(r => `<div class="row" id="${{r.row}}"><b>${{r.row}}</b> ` +
  ['yes','maybe','no'].map(l =>
    `<label><input type="radio" name="${{r.row}}" value="${{l}}"> ${{l}}</label>`).join(' ') +
  ` <label><input type="checkbox" name="${{r.row}}-cf"> context-free</label>` +
  r.contexts.map(c => '<div class="ctx">' +
    c.map(([t, l]) => `<span class="l${{l}}">${{esc(t)}}</span>`).join('') + '</div>').join('') +
  '</div>').join('');
function answers() {{
  const out = {{}};
  for (const r of sheet.rows) {{
    const picked = document.querySelector(`input[name="${{r.row}}"]:checked`);
    const cf = document.querySelector(`input[name="${{r.row}}-cf"]`).checked;
    if (picked) out[r.row] = {{label: picked.value, context_free: cf}};
  }}
  return out;
}}
document.addEventListener('change', () => {{
  const done = Object.keys(answers()).length;
  document.getElementById('progress').textContent = `${{done}} of ${{sheet.rows.length}} answered`; }});
document.getElementById('save').onclick = () => {{
  const blob = new Blob([JSON.stringify({{study: sheet.study, key_file: sheet.key_file, answers: answers()}}, null, 1)],
                        {{type: 'application/json'}});
  const a = document.createElement('a'); a.href = URL.createObjectURL(blob); a.download = 'answers.json'; a.click();
}};
</script></body></html>
"""


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return centre - half, centre + half


def score(answers_path: str | Path, key_path: str | Path | None = None) -> dict[str, Any]:
    """Unblind a filled-in sheet: per dictionary the counts of yes / maybe / no and context-free."""
    path = Path(answers_path)
    try:
        answers = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable answers file ({e}).") from None
    if not isinstance(answers, dict) or "answers" not in answers or "study" not in answers:
        raise ConfigError(f"{path} is not a tcx study answers file (it needs 'study' and 'answers', as the "
                          "sheet's save button writes).")
    key_file = Path(key_path or answers.get("key_file") or path.parent / "key.json")
    if not key_file.is_file():
        raise ConfigError(f"the study key {key_file} is missing: pass key=<study dir>/key.json.")
    key = json.loads(key_file.read_text())
    if answers["study"] != key["study"]:
        raise ConfigError(f"{path} answers study {answers['study']}, but {key_file} is the key of study "
                          f"{key['study']}: a sheet from another study.")
    for rid, a in answers["answers"].items():
        if rid not in key["rows"]:
            raise ConfigError(f"{path}: row '{rid}' is not in study {key['study']} (an edited or foreign sheet).")
        if not isinstance(a, dict) or a.get("label") not in LABELS:
            raise ConfigError(f"{path}: row '{rid}' has answer {a!r}; each answer is one of {LABELS}.")
    missing = sorted(set(key["rows"]) - set(answers["answers"]))
    if missing:
        raise ConfigError(f"{path}: {len(missing)} rows are unanswered ({', '.join(missing[:10])}"
                          f"{', ...' if len(missing) > 10 else ''}): finish the sheet and save again.")
    table: dict[str, dict[str, Any]] = {}
    for rid, a in sorted(answers["answers"].items()):
        row = table.setdefault(key["rows"][rid]["run"], {"n": 0, **dict.fromkeys(LABELS, 0), "context_free": 0})
        row["n"] += 1
        row[a["label"]] += 1
        row["context_free"] += bool(a.get("context_free"))
    for row in table.values():
        row["interpretable_share"] = row["yes"] / row["n"]
        row["interpretable_ci95"] = list(wilson(row["yes"], row["n"]))
    write_json(path.with_name(path.stem + "_scored.json"), {"study": key["study"], "dictionaries": table})
    return table


def print_table(table: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'dictionary':<40} {'n':>4} {'yes':>4} {'maybe':>6} {'no':>4} {'ctx-free':>9}  interpretable (95% CI)"]
    for run, r in table.items():
        lo, hi = r["interpretable_ci95"]
        lines.append(f"{run[-40:]:<40} {r['n']:>4} {r['yes']:>4} {r['maybe']:>6} {r['no']:>4} "
                     f"{r['context_free']:>9}  {r['interpretable_share']:.2f} ({lo:.2f}-{hi:.2f})")
    return "\n".join(lines)
