"""The look of every HTML page tinyvision writes: one style sheet and the report's template.

The per-run report (``report.py``) and the comparison page (``compare.py``) share ``CSS``, so
both read as one tool; each page is one self-contained file (CSS inline, figures as data URIs).
"""

from __future__ import annotations

import base64

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --soft:#f6f8fa; --accent:#0969da;
        --good:#1a7f37; --warn:#9a6700; --bad:#cf222e; }
* { box-sizing: border-box; }
body { margin:0; background:#fff; color:var(--fg); line-height:1.5;
       font:15px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,
       sans-serif; }
main { max-width:1120px; margin:0 auto; padding:28px 28px 60px; }
header { border-bottom:1px solid var(--line); padding-bottom:14px; margin-bottom:8px; }
h1 { font-size:26px; margin:0 0 4px; word-break:break-all; }
h2 { font-size:19px; margin:34px 0 10px; padding-bottom:6px; border-bottom:1px solid var(--line); }
h3 { font-size:15px; margin:18px 0 6px; }
p { margin:6px 0; }
.muted { color:var(--muted); }
.badge { display:inline-block; padding:1px 9px; border-radius:999px; font-size:12.5px;
         font-weight:600; border:1px solid var(--line); background:var(--soft); }
.badge.brief { background:#ddf4ff; border-color:#54aeff66; color:#0550ae; }
.badge.good { background:#dafbe1; border-color:#4ac26b66; color:var(--good); }
.badge.warn { background:#fff8c5; border-color:#d4a72c66; color:var(--warn); }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(150px,1fr)); gap:10px;
         margin:16px 0 6px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 12px;
        background:var(--soft); }
.card .label { font-size:12px; color:var(--muted); text-transform:uppercase;
               letter-spacing:.03em; }
.card .value { font-size:21px; font-weight:600; font-variant-numeric:tabular-nums; }
.card.main { background:#ddf4ff; border-color:#54aeff66; }
table { border-collapse:collapse; font-size:13.5px; font-variant-numeric:tabular-nums; }
th, td { text-align:left; padding:4px 10px; border-bottom:1px solid var(--line);
         vertical-align:top; }
th { background:var(--soft); font-weight:600; }
td.num, th.num { text-align:right; }
tbody tr:hover { background:#f3f8ff; }
.columns { columns:3 300px; column-gap:28px; }
.columns > div { break-inside:avoid; margin-bottom:16px; }
.columns > div > h3 { margin-top:0; }
.columns table { width:100%; }
tr.changed td { background:#fff8c5; }
tr.changed td:first-child { color:var(--fg); font-weight:600; }
.track { display:inline-block; width:64px; height:8px; border-radius:4px; background:#eaeef2;
         vertical-align:middle; margin-left:8px; overflow:hidden; }
.grid2 { display:grid; grid-template-columns:repeat(auto-fit,minmax(340px,1fr)); gap:14px 28px;
         align-items:start; }
.kv td:first-child { color:var(--muted); white-space:nowrap; }
.kv td { word-break:break-word; }
code, pre { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12.5px; }
pre { background:var(--soft); border:1px solid var(--line); border-radius:6px; padding:10px;
      overflow-x:auto; }
pre.wrap { white-space:pre-wrap; }
img.figure { max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px; }
details { margin:10px 0; } summary { cursor:pointer; color:var(--accent); }
.note { border-left:3px solid var(--warn); background:#fff8c5; padding:6px 10px; margin:8px 0; }
.bar { display:block; height:100%; background:var(--accent); opacity:.6; }
footer { margin-top:40px; font-size:12.5px; color:var(--muted); }
"""

REPORT_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} · tinyvision report</title>
<style>{{ css | safe }}</style>
</head>
<body><main>
<header>
  <h1>{{ title }}</h1>
  <p>
    <span class="badge">{{ model_name }}</span>
    {% if brief %}<span class="badge brief">brief {{ brief.letter }} · {{ brief.title }}</span>
    {% endif %}<span class="badge">{{ dataset }}</span>
    <span class="badge {{ 'good' if verified else 'warn' }}">data {{ data_source[2][1] }}</span>
  </p>
  <div class="cards">
  {% for label, value, id in headline %}
    <div class="card{{ ' main' if loop.first }}"><div class="label">{{ label }}</div>
      <div class="value"{% if id %} id="{{ id }}"{% endif %}>{{ value }}</div></div>
  {% endfor %}
  </div>
</header>

<section id="model">
<h2>Model</h2>
<p><b>{{ model_name }}</b> ({{ family }}): {{ variant_description }}</p>
{% if brief %}<p class="muted">Brief {{ brief.letter }}, {{ brief.title }}: {{ brief.summary }}</p>
{% endif %}
{% if answers %}<h3>The brief's shape questions</h3><pre class="wrap">{{ answers }}</pre>{% endif %}
<details><summary>Layers, output shapes, parameters and multiply-accumulates</summary>
<pre>{{ layers }}</pre></details>
</section>

<section id="curves">
<h2>Training curves</h2>
<img class="figure" alt="loss and accuracy curves" src="{{ images.curves }}">
<details><summary>Every epoch's numbers</summary>
<table><thead><tr>{% for h in epoch_header %}<th class="num">{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in epoch_rows %}<tr>{% for cell in row %}<td class="num">{{ cell }}</td>
{% endfor %}</tr>{% endfor %}</tbody></table></details>
</section>

<section id="classes">
<h2>Per-class accuracy and confusion matrix</h2>
<p class="muted">Test accuracy {{ recomputed }}.</p>
{% if agreement %}<p class="note">{{ agreement }}</p>{% endif %}
<div class="grid2">
<table id="per-class">
<thead><tr><th>class</th><th class="num">images</th><th class="num">accuracy</th>
<th>most often taken for</th></tr></thead>
<tbody>
{% for row in per_class %}<tr data-class="{{ row['class'] }}">
<td>{{ row['class'] }}</td><td class="num">{{ row['count'] }}</td>
<td class="num"><span class="acc">{{ row.accuracy_text }}</span><span class="track"><span
 class="bar" style="width:{{ (100 * (row.accuracy or 0)) | round(1) }}%"></span></span></td>
<td>{{ row.confused_text }}</td></tr>
{% endfor %}</tbody></table>
<img class="figure" alt="confusion matrix" src="{{ images.confusion }}">
</div>
</section>

<section id="mistakes">
<h2>Misclassified test images</h2>
<p class="muted">{{ misclassified_shown }} of {{ misclassified_count }} mistakes, the most
confident first: true label in green, predicted label and its probability in red.</p>
<img class="figure" alt="misclassified test images" src="{{ images.misclassified }}">
</section>

<section id="hyperparameters">
<h2>Hyperparameters</h2>
<p class="muted">The resolved configuration (config.toml): every setting, defaults included.
<span class="badge warn">highlighted</span> = changed from the defaults of {{ model_name }}.</p>
<div class="columns">
{% for section, rows in hyperparameters %}<div><h3>[{{ section }}]</h3>
<table class="kv">{% for key, value, changed in rows %}<tr{% if changed %} class="changed"{%
endif %}><td>{{ key }}</td><td><code>{{ value }}</code></td></tr>{% endfor %}</table></div>
{% endfor %}</div>
</section>

<section id="data">
<h2>Data</h2>
<table class="kv">{% for key, value in data_source %}<tr><td>{{ key }}</td><td>{{ value }}</td>
</tr>{% endfor %}</table>
</section>

<section id="environment">
<h2>Time, device and versions</h2>
<table class="kv">{% for key, value in environment %}<tr><td>{{ key }}</td><td>{{ value }}</td>
</tr>{% endfor %}</table>
</section>

<footer>Written by tinyvision {{ version }} on {{ generated }}. Beside this file:
config.toml, metrics.csv, per_class.json, model.pt, report.md.</footer>
</main></body>
</html>
"""


def data_uri(png: bytes) -> str:
    """A PNG embedded in the page itself, so the file opens offline and can be mailed."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
