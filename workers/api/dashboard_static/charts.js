// Drawing helpers: DOM nodes built with textContent only (data never goes through
// innerHTML), plotly.js charts, and the time axis of the admin API's series.

/* global Plotly */

const STEP_MS = { minute: 60e3, hour: 3600e3, day: 86400e3 };
const SPAN_MS = { '1h': 3600e3, '24h': 86400e3, '7d': 7 * 86400e3, '30d': 30 * 86400e3 };

export const COLORS = ['#2563eb', '#f97316', '#16a34a', '#9333ea', '#dc2626', '#0891b2',
  '#ca8a04', '#db2777', '#64748b', '#4d7c0f'];

/** An element; string children become text nodes, never markup. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (name === 'class') node.className = value;
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A hint where `backticks` mark commands, shown as code (still text nodes). */
export function hint(text) {
  return el('p', { class: 'empty' }, ...text.split('`').map(
    (part, i) => (i % 2 ? el('code', {}, part) : part)));
}

/**
 * Plotly reads a small subset of HTML in labels (<b>, <a href>...). Names come from
 * callers (agents, users, budgets), so they are entity-escaped: shown as written.
 */
export function label(value) {
  return String(value).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

export const usd = (v) => (v === 0 ? '$0' : Math.abs(v) >= 100 ? `$${v.toFixed(0)}`
  : Math.abs(v) >= 1 ? `$${v.toFixed(2)}` : `$${v.toPrecision(2)}`);
export const pct = (v) => `${(100 * v).toFixed(1)}%`;
export const ms = (v) => (v === null || v === undefined ? '–'
  : v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(0)} ms`);

/** "YYYY-MM-DD HH:MM" in UTC: plotly draws dates as given, without time zones. */
export function utcWall(msSinceEpoch) {
  return new Date(msSinceEpoch).toISOString().slice(0, 16).replace('T', ' ');
}

/**
 * Every bucket from `since` over the range, so that a quiet bucket shows as zero or
 * as a gap rather than being skipped: [{t (ms), x (label)}].
 */
export function buckets(since, range, bucket) {
  const step = STEP_MS[bucket];
  const start = Date.parse(since);
  const first = Math.floor(start / step) * step;
  const out = [];
  for (let t = first; t <= start + SPAN_MS[range]; t += step) out.push({ t, x: utcWall(t) });
  return out;
}

/** The series' points keyed by bucket start (ms). */
export function byBucket(rows) {
  return new Map(rows.map((row) => [Date.parse(row.bucket), row]));
}

/** A time x-axis with short labels (the hover shows the whole bucket). */
export function timeAxis(range) {
  return { type: 'date', nticks: 6, tickformat: range === '7d' || range === '30d' ? '%b %d' : '%H:%M' };
}

/** Money ticks without SI prefixes (plotly would write 40µ for $0.00004). */
export const MONEY = { tickformat: '$.3~r' };

export function minutesIn(bucket) {
  return STEP_MS[bucket] / 60e3;
}

function baseLayout() {
  return {
    margin: { l: 52, r: 16, t: 8, b: 40 },
    paper_bgcolor: 'rgba(0,0,0,0)',
    plot_bgcolor: 'rgba(0,0,0,0)',
    font: { family: 'system-ui, -apple-system, Segoe UI, sans-serif', size: 12, color: '#334155' },
    colorway: COLORS,
    legend: { orientation: 'h', x: 0, y: 1.02, yanchor: 'bottom', font: { size: 11 } },
    xaxis: { gridcolor: '#e2e8f0', zeroline: false, automargin: true },
    yaxis: { gridcolor: '#e2e8f0', zeroline: false, automargin: true, rangemode: 'tozero' },
    hoverlabel: { font: { size: 12 } },
    bargap: 0.25,
  };
}

function merge(base, extra) {
  const out = { ...base };
  for (const [key, value] of Object.entries(extra)) {
    out[key] = value && typeof value === 'object' && !Array.isArray(value) && base[key]
      ? { ...base[key], ...value } : value;
  }
  return out;
}

const CONFIG = { displayModeBar: false, responsive: true };

/** Draw (or redraw in place) a chart; `layout` adds to the common look. */
export function plot(node, traces, layout = {}) {
  node.hidden = false;
  if (!window.Plotly) {  // a broken install: say so where the chart would be
    node.replaceChildren(hint('Charts are off: plotly.js did not load (`pip install plotly` where `llmfleet api` runs).'));
    return undefined;
  }
  return Plotly.react(node, traces, merge(baseLayout(), layout), CONFIG);
}

/** Clear a chart and leave a hint in its place. */
export function blank(node) {
  if (node.data && window.Plotly) Plotly.purge(node);
  node.hidden = true;
}
