"""The evaluation report as one self-contained HTML page: the Jinja template and its rendering.

The page holds its CSS inline and its plots as data URIs, so it opens and prints anywhere, offline;
every string from the data is escaped by Jinja's autoescape. jinja2 is imported on the first render.
"""

from __future__ import annotations

import base64
import re
from functools import lru_cache
from typing import Any

from pulse_pipeline.core.evaluation.report_plots import PLOT_TITLES
from pulse_pipeline.core.evaluation.report_view import build_view, set_heading

HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ v.family }} {{ v.version }}: {{ v.decision }}</title>
<style>
  :root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; }
  * { box-sizing: border-box; }
  body { margin: 0 auto; max-width: 1100px; padding: 24px 32px 48px; color: var(--ink); background: #fff;
         font: 15px/1.5 -apple-system, "Segoe UI", Roboto, Arial, "DejaVu Sans", sans-serif; }
  h1 { font-size: 26px; margin: 0 0 8px; display: flex; flex-wrap: wrap; align-items: center; gap: 12px; }
  h2 { font-size: 20px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
  h3 { font-size: 16px; margin: 20px 0 6px; }
  .badge { display: inline-block; padding: 3px 14px; border-radius: 999px; color: #fff; font-size: 16px;
           font-weight: 700; letter-spacing: .06em; background: #59636e; }
  .badge.deploy { background: #1a7f37; } .badge.review { background: #b35900; color: #fff; }
  .badge.fail { background: #c62828; color: #fff; }  /* over .review / .fail, the table colours */
  .why { font-size: 16px; margin: 4px 0 16px; }
  dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
  dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
  table { border-collapse: collapse; margin: 6px 0 12px; width: 100%; font-size: 14px; }
  th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
  th { background: var(--soft); } tbody tr:nth-child(even) { background: #fbfcfd; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  td.text { overflow-wrap: anywhere; }
  .pass, .better { color: #1a7f37; } .review { color: #b35900; font-weight: 700; }
  .fail, .worse { color: #c62828; font-weight: 700; } .na, .no-clear-change { color: var(--muted); }
  .lower { color: var(--muted); font-size: 12px; } .wrong { color: #c62828; }
  figure { margin: 12px 0; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
  .note { color: var(--muted); }
  @media print {
    body { padding: 0; max-width: none; font-size: 12px; }
    h2 { break-after: avoid; } table, figure, tr { break-inside: avoid; }
    .badge { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  }
</style>
</head>
<body>
<h1><span>{{ v.family }} {{ v.version }}</span>
  <span class="badge {{ css(v.decision) }}">{{ v.decision }}</span></h1>
<p class="why">{{ v.why }}</p>
<dl class="facts">
{%- for label, value in v.facts %}
  <dt>{{ label }}</dt><dd>{{ value }}</dd>
{%- endfor %}
</dl>

<h2>Gate checks</h2>
{%- if v.checks %}
<table>
  <thead><tr><th>metric</th><th>set</th><th>kind</th><th>value</th><th>threshold</th><th>outcome</th></tr>
  </thead>
  <tbody>
  {%- for c in v.checks %}
    <tr><td>{{ c.metric }}</td><td>{{ c.set }}</td><td>{{ c.kind }}</td><td class="num">{{ c.value }}</td>
        <td>{{ c.threshold }}</td>
        <td class="{{ css(c.outcome) }}" title="{{ c.reason }}">{{ c.outcome }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{%- else %}
<p class="note">No gate checks were recorded.</p>
{%- endif %}

<h2>Metrics</h2>
{%- for s in v.sets %}
<h3>{{ heading(s) }}</h3>
{%- if s.rows %}
<table>
  <thead><tr><th>metric</th><th>candidate</th><th>baseline</th><th>delta (95% CI)</th><th>change</th></tr>
  </thead>
  <tbody>
  {%- for r in s.rows %}
    <tr><td>{{ r.metric }}
          {%- if r.lower_is_better %} <span class="lower">(lower is better)</span>{% endif %}</td>
        <td class="num">{{ r.candidate }}</td><td class="num">{{ r.baseline }}</td>
        <td class="num">{{ r.delta }}</td>
        <td class="{{ css(r.verdict) }}">{{ r.verdict }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{%- else %}
<p class="note">No metrics for this set.</p>
{%- endif %}
{%- else %}
<p class="note">No metrics were recorded.</p>
{%- endfor %}
{{ figure("deltas") }}

{%- if v.forgetting %}
<h2>Forgetting (old slices)</h2>
<p>{{ v.forgetting.rule }}</p>
{%- if v.forgetting.rows %}
<table>
  <thead><tr><th>slice</th><th>snapshot</th><th>created</th><th>examples</th><th>baseline</th><th>candidate</th>
    <th>delta</th><th>interval</th><th>verdict</th></tr>
  </thead>
  <tbody>
  {%- for r in v.forgetting.rows %}
    <tr><td>{{ r.slice }}</td><td>{{ r.snapshot }}</td><td>{{ r.created }}</td><td class="num">{{ r.examples }}</td>
        <td class="num">{{ r.baseline }}</td><td class="num">{{ r.candidate }}</td>
        <td class="num">{{ r.delta }}</td><td class="num">{{ r.interval }}</td>
        <td class="{{ css(r.verdict) }}" title="{{ r.reason }}">{{ r.verdict }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{%- endif %}
{%- if v.forgetting.notes %}
<ul class="note">
{%- for note in v.forgetting.notes %}
  <li>{{ note }}</li>
{%- endfor %}
</ul>
{%- endif %}
{%- endif %}

{%- if v.flipped %}
<h2>Flipped examples (baseline right, candidate wrong)</h2>
{%- if v.flipped_total > v.flipped | length %}
<p class="note">The first {{ v.flipped | length }} of {{ v.flipped_total }}.</p>
{%- endif %}
<table>
  <thead><tr><th>set</th><th>id</th><th>input</th><th>reference</th><th>candidate</th><th>baseline</th></tr>
  </thead>
  <tbody>
  {%- for f in v.flipped %}
    <tr><td>{{ f.set }}</td><td>{{ f.id }}</td>
        <td class="text">{{ f.input }}</td><td class="text">{{ f.reference }}</td>
        <td class="text wrong">{{ f.candidate }}</td><td class="text">{{ f.baseline }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{%- endif %}

{%- if v.confusions or plots.confusion %}
<h2>Confusions (candidate, test set)</h2>
{%- if v.confusions %}
<table>
  <thead><tr><th>true label</th><th>predicted</th><th>count</th></tr></thead>
  <tbody>
  {%- for actual, predicted, count in v.confusions %}
    <tr><td>{{ actual }}</td><td>{{ predicted }}</td><td class="num">{{ count }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{%- endif %}
{{ figure("confusion") }}
{%- endif %}

{%- if v.dimensions or plots.per_dimension %}
<h2>Mean absolute error per dimension (lower is better)</h2>
{%- if v.dimensions %}
<table>
  <thead><tr><th>dimension</th><th>candidate</th><th>baseline</th><th>delta</th><th>change</th></tr></thead>
  <tbody>
  {%- for r in v.dimensions %}
    <tr><td>{{ r.dimension }}</td><td class="num">{{ r.candidate }}</td><td class="num">{{ r.baseline }}</td>
        <td class="num">{{ r.delta }}</td><td class="{{ css(r.verdict) }}">{{ r.verdict }}</td></tr>
  {%- endfor %}
  </tbody>
</table>
{%- endif %}
{{ figure("per_dimension") }}
{%- endif %}

{%- for table in v.categories %}
<h2>By category ({{ table.set }}, candidate)</h2>
<table>
  <thead><tr><th>category</th><th>examples</th>{% for c in table.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
  <tbody>
  {%- for row in table.rows %}
    <tr><td>{{ row[0] }}</td>{% for cell in row[1:] %}<td class="num">{{ cell }}</td>{% endfor %}</tr>
  {%- endfor %}
  </tbody>
</table>
{%- endfor %}

{%- if v.unknown_sources %}
<h2>Citations of unknown sources (not in the source registry)</h2>
<ul>
{%- for set_name, ids in v.unknown_sources %}
  <li><strong>{{ set_name }}</strong>: {{ ids }}</li>
{%- endfor %}
</ul>
{%- endif %}

{%- if v.training or plots.loss_curve %}
<h2>Training</h2>
<dl class="facts">
{%- for label, value in v.training %}
  <dt>{{ label }}</dt><dd>{{ value }}</dd>
{%- endfor %}
</dl>
{{ figure("loss_curve") }}
{%- endif %}

{%- if extra_plots %}
<h2>More plots</h2>
{%- for name in extra_plots %}
{{ figure(name) }}
{%- endfor %}
{%- endif %}

{%- if v.skipped %}
<h2>Skipped</h2>
<ul>
{%- for what, why in v.skipped %}
  <li><strong>{{ what }}</strong>{% if why %}: {{ why }}{% endif %}</li>
{%- endfor %}
</ul>
{%- endif %}
</body>
</html>
"""

_FIGURE = """{%- macro figure(name) %}{% if plots[name] %}
<figure><img src="{{ plots[name] }}" alt="{{ titles.get(name, name) }}"></figure>
{%- endif %}{% endmacro %}"""


@lru_cache(maxsize=1)
def _html_template() -> Any:
    import jinja2

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return environment.from_string(_FIGURE + HTML_TEMPLATE)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(results: dict, plots: dict[str, bytes]) -> str:
    """The report as one self-contained HTML page: inline CSS, plots as data URIs, all data text escaped."""
    uris = {name: _data_uri(png) for name, png in (plots or {}).items() if png}
    return _html_template().render(
        v=build_view(results),
        plots={name: "" for name in PLOT_TITLES} | uris,  # an absent plot reads "": the section tests it
        titles=PLOT_TITLES,
        extra_plots=[name for name in uris if name not in PLOT_TITLES],
        heading=set_heading,
        css=_css_class,
    )


def _css_class(word: str) -> str:
    """An outcome or verdict as a CSS class: "no clear change" -> "no-clear-change", "n/a" -> "na"."""
    return re.sub(r"[^a-z0-9-]", "", word.lower().replace(" ", "-"))
