// One function per panel: each takes the admin API's JSON and fills its panel, or says
// what to do to fill it. A panel's data-filled attribute tells which it did.

import {
  MONEY, blank, buckets, byBucket, el, hint, label, minutesIn, ms, pct, plot, timeAxis, usd,
} from './charts.js';

const RUN_JOBS = 'run `llmfleet demo` or submit jobs (`llmfleet submit`, or POST /v1/chat/completions).';
const NO_JOBS = `No jobs in this range: ${RUN_JOBS}`;
const NO_MATCH = 'No jobs of this agent and model in this range: clear the filters or choose a longer range.';

/** Set by the page: whether the agent or model filter is on, which changes the hints. */
export const view = { filtered: false };
const STATE_COLORS = { ok: '#16a34a', alert: '#f59e0b', exceeded: '#dc2626' };

const $ = (id) => document.getElementById(id);

/** Mark a panel filled, or empty with a hint saying how to fill it. */
/** The hint of a panel the filters narrow: with a filter on, it is the likelier cause. */
const unlessFiltered = (text) => (view.filtered ? NO_MATCH : text);

function mark(id, emptyText) {
  const section = $(`panel-${id}`);
  section.querySelectorAll(':scope > p.empty').forEach((node) => node.remove());
  section.dataset.filled = emptyText ? 'false' : 'true';
  if (emptyText) section.querySelector('h2').after(hint(emptyText));
}

function table(node, head, rows) {
  node.replaceChildren(
    el('thead', {}, el('tr', {}, head.map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, rows.map((cells) => el('tr', {}, cells.map((c) => el('td', {}, c))))));
}

const badge = (text, kind) => el('span', { class: `badge ${kind}` }, text);

export function kpis(metrics, range) {
  const t = metrics.totals;
  const minutes = { '1h': 60, '24h': 1440, '7d': 10080, '30d': 43200 }[range];
  const tiles = [
    ['Jobs', t.jobs.toLocaleString('en')], ['Jobs/min', (t.jobs / minutes).toFixed(2)],
    ['Error rate', pct(t.error_rate)], ['Latency p50', ms(t.latency_p50_ms)],
    ['Latency p95', ms(t.latency_p95_ms)], ['First token p50', ms(t.ttft_p50_ms)],
    ['First token p95', ms(t.ttft_p95_ms)], ['Cost', usd(t.cost_usd)],
    ['Cache hit rate', pct(t.cache_hit_rate)], ['Saved by cache', usd(t.cost_saved_usd)],
  ];
  $('kpis').replaceChildren(...tiles.map(([name, value]) => el('div', { class: 'kpi' },
    el('span', { class: 'kpi-name' }, name), el('span', { class: 'kpi-value' }, value))));
}

export function throughput(metrics, range) {
  const node = $('chart-throughput');
  if (!metrics.totals.jobs) { blank(node); mark('throughput', unlessFiltered(NO_JOBS)); return; }
  const rows = byBucket(metrics.series);
  const axis = buckets(metrics.since, range, metrics.bucket);
  const x = axis.map((b) => b.x);
  const per = minutesIn(metrics.bucket);
  const errors = axis.map((b) => (rows.has(b.t) ? 100 * rows.get(b.t).error_rate : null));
  plot(node, [
    { type: 'bar', name: 'jobs/min', x, y: axis.map((b) => (rows.get(b.t)?.jobs ?? 0) / per),
      hovertemplate: '%{y:.2f} jobs/min<extra></extra>' },
    { type: 'scatter', mode: 'lines+markers', name: 'error rate %', x, y: errors,
      yaxis: 'y2', connectgaps: false, line: { color: '#dc2626', width: 2 },
      marker: { size: 5 }, hovertemplate: '%{y:.1f}% errors<extra></extra>' },
  ], {
    xaxis: timeAxis(range), yaxis: { title: { text: 'jobs/min' } },
    yaxis2: { title: { text: 'errors %' }, overlaying: 'y', side: 'right', showgrid: false,
      rangemode: 'tozero', range: [0, Math.max(5, ...errors.filter((e) => e !== null)) * 1.15] },
    margin: { r: 52 }, hovermode: 'x unified',
  });
  mark('throughput');
}

export function latency(metrics, range) {
  const node = $('chart-latency');
  const rows = byBucket(metrics.series);
  if (![...rows.values()].some((r) => r.latency_p50_ms !== null)) {
    blank(node); mark('latency', unlessFiltered(NO_JOBS)); return;
  }
  const axis = buckets(metrics.since, range, metrics.bucket);
  const line = (p, color) => ({
    type: 'scatter', mode: 'lines+markers', name: `p${p}`, x: axis.map((b) => b.x),
    y: axis.map((b) => rows.get(b.t)?.[`latency_p${p}_ms`] ?? null), connectgaps: false,
    line: { color, width: 2 }, marker: { size: 5 }, hovertemplate: `p${p} %{y:.0f} ms<extra></extra>`,
  });
  plot(node, [line(50, '#2563eb'), line(95, '#f97316')],
    { xaxis: timeAxis(range), yaxis: { title: { text: 'ms' } }, hovermode: 'x unified' });
  mark('latency');
}

export function costByModel(spend, range) {
  const node = $('chart-cost-model');
  $('cost-model-title').textContent = `Cost per ${spend.bucket} by model`;
  if (!(spend.total_cost_usd > 0)) {
    blank(node);
    mark('cost-model', unlessFiltered(`No spend in this range (cache hits cost nothing): ${RUN_JOBS}`));
    return;
  }
  const axis = buckets(spend.since, range, spend.bucket);
  const cost = new Map(spend.by_bucket_model.map((r) => [`${Date.parse(r.bucket)}|${r.model}`, r.cost_usd]));
  const models = spend.models.filter((m) => spend.by_bucket_model.some(
    (r) => r.model === m && r.cost_usd > 0));
  plot(node, models.map((model) => ({
    type: 'bar', name: label(model || '(no model)'), x: axis.map((b) => b.x),
    y: axis.map((b) => cost.get(`${b.t}|${model}`) ?? 0),
    hovertemplate: `${label(model || '(no model)')}: $%{y:.4f}<extra></extra>`,
  })), { barmode: 'stack', xaxis: timeAxis(range), yaxis: MONEY, hovermode: 'x unified' });
  mark('cost-model');
}

function ranked(id, block, key, emptyText) {
  const node = $(`chart-${id}`);
  const rows = block.rows.filter((r) => r.cost_usd > 0 || r.jobs > 0);
  if (!rows.length) { blank(node); mark(id, unlessFiltered(emptyText)); return; }
  const names = rows.map((r) => label(r[key] || `(no ${key})`));
  const costs = rows.map((r) => r.cost_usd);
  const jobs = rows.map((r) => r.jobs);
  if (block.others.groups > 0) {
    names.push(`others (${block.others.groups})`);
    costs.push(block.others.cost_usd);
    jobs.push(block.others.jobs);
  }
  plot(node, [{
    type: 'bar', orientation: 'h', x: costs, y: names, customdata: jobs,
    text: costs.map(usd), textposition: 'auto', cliponaxis: false,
    marker: { color: names.map((_, i) => (i < rows.length ? '#2563eb' : '#94a3b8')) },
    hovertemplate: '%{y}: $%{x:.4f}, %{customdata} jobs<extra></extra>',
  }], { yaxis: { autorange: 'reversed', type: 'category' }, xaxis: MONEY,
    margin: { l: 8 }, showlegend: false });
  mark(id);
}

export function topSpenders(spend) {
  ranked('agents', spend.agents, 'agent',
    'No spend in this range: every fleet key names its agent (`llmfleet keys create --agent coder`); run jobs with one.');
  ranked('users', spend.users, 'user',
    'No spend in this range: jobs name their user by the key (`--user`) or `user=` on submit.');
}

export function budgets(list) {
  const node = $('chart-budgets');
  if (!list.length) {
    blank(node);
    mark('budgets', 'No budgets: add a `[[budgets]]` table to the fleet file (`LLMFLEET_CONFIG`), e.g. limit_usd = 10, period = "daily".');
    return;
  }
  const names = list.map((b) => label(b.name));
  const shares = list.map((b) => 100 * b.share);
  const top = Math.max(110, ...shares.map((s) => Math.min(s, 400))) * 1.1;
  plot(node, [
    { type: 'bar', orientation: 'h', name: 'spent', x: shares.map((s) => Math.min(s, top)), y: names,
      marker: { color: list.map((b) => STATE_COLORS[b.state] || '#64748b') },
      text: list.map((b) => `${pct(b.share)} · ${b.state}`),
      textposition: 'outside', cliponaxis: false,
      customdata: list.map((b) => `${label(b.period)}, ${label(b.scope)}: ${usd(b.spent_usd)} of ${usd(b.limit_usd)}`),
      hovertemplate: '%{y} (%{customdata})<extra></extra>' },
    { type: 'scatter', mode: 'markers', name: 'alert threshold', y: names,
      x: list.map((b) => 100 * b.alert_threshold),
      marker: { symbol: 'line-ns', size: 28, color: '#0f172a', line: { width: 3, color: '#0f172a' } },
      hovertemplate: 'alert at %{x:.0f}%<extra></extra>' },
  ], {
    xaxis: { range: [0, top], ticksuffix: '%' }, yaxis: { autorange: 'reversed', type: 'category' },
    shapes: [{ type: 'line', x0: 100, x1: 100, yref: 'paper', y0: 0, y1: 1,
      line: { color: '#dc2626', dash: 'dot', width: 1.5 } }],
    margin: { l: 8 }, showlegend: true,
  });
  mark('budgets');
}

export function cache(metrics, range) {
  const node = $('chart-cache');
  const t = metrics.totals;
  $('cache-figures').replaceChildren(
    el('span', { class: 'big' }, pct(t.cache_hit_rate)), ' hit rate · ',
    el('span', { class: 'big' }, usd(t.cost_saved_usd)), ' saved · ',
    `${t.cache_hits.toLocaleString('en')} hits of ${t.jobs.toLocaleString('en')} jobs`);
  if (!t.jobs) { blank(node); mark('cache', unlessFiltered(NO_JOBS)); return; }
  const rows = byBucket(metrics.series);
  const axis = buckets(metrics.since, range, metrics.bucket);
  const x = axis.map((b) => b.x);
  plot(node, [
    { type: 'bar', name: 'saved $', x, y: axis.map((b) => rows.get(b.t)?.cost_saved_usd ?? 0),
      marker: { color: '#86efac' }, hovertemplate: 'saved $%{y:.4f}<extra></extra>' },
    { type: 'scatter', mode: 'lines+markers', name: 'hit rate %', x, yaxis: 'y2',
      y: axis.map((b) => (rows.has(b.t) ? 100 * rows.get(b.t).cache_hit_rate : null)),
      connectgaps: false, line: { color: '#16a34a', width: 2 }, marker: { size: 5 },
      hovertemplate: '%{y:.1f}% hits<extra></extra>' },
  ], {
    xaxis: timeAxis(range), yaxis: MONEY, margin: { r: 44 }, hovermode: 'x unified',
    yaxis2: { overlaying: 'y', side: 'right', range: [0, 105], ticksuffix: '%', showgrid: false },
  });
  mark('cache');
}

export function queues(overview) {
  const { workers } = overview;
  const queueNames = Object.keys(overview.queue_depths);
  $('queue-figures').replaceChildren(
    el('span', { class: 'big' }, String(workers.up)), workers.up === 1 ? ' worker up' : ' workers up',
    workers.names.length ? el('small', {}, ` (${workers.names.join(', ')})`) : '');
  plot($('chart-queues'), [
    { type: 'bar', name: 'waiting jobs', x: queueNames, y: queueNames.map((q) => overview.queue_depths[q]),
      marker: { color: '#f97316' }, hovertemplate: '%{x}: %{y} waiting<extra></extra>' },
    { type: 'bar', name: 'workers', x: queueNames, y: queueNames.map((q) => workers.per_queue[q] ?? 0),
      marker: { color: '#2563eb' }, hovertemplate: '%{x}: %{y} workers<extra></extra>' },
  ], { barmode: 'group', yaxis: { dtick: 1, rangemode: 'tozero' } });
  mark('queues', workers.up ? undefined
    : 'No worker answers: start one with `llmfleet worker` (or the whole fleet with `llmfleet up`).');
}

function experimentRows(report) {
  return report.variants.map((v, i) => [
    i === 0 ? report.experiment : '', i === 0 ? badge(report.status, report.status) : '',
    v.name, String(v.jobs ?? 0), String(v.outcomes ?? 0),
    v.success_rate === null || v.success_rate === undefined ? '–' : pct(v.success_rate),
    v.success_ci95 ? `${pct(v.success_ci95[0])} – ${pct(v.success_ci95[1])}` : '–',
    i === 0 && report.p_value !== null && report.p_value !== undefined ? report.p_value.toFixed(3) : '',
    i === 0 ? (report.winner ?? '') : '',
  ]);
}

export function experiments(page) {
  const node = $('chart-experiments');
  const list = page.experiments.slice(0, 8);
  table($('table-experiments'), ['Experiment', 'Status', 'Variant', 'Jobs', 'Outcomes', 'Success',
    '95% interval', 'p', 'Winner'], list.flatMap(experimentRows));
  $('table-experiments').hidden = !list.length;
  if (!list.length) {
    blank(node);
    mark('experiments', 'No experiments: create one with `llmfleet experiments create` (or client.experiments.create), start it, and report outcomes with client.feedback().');
    return;
  }
  const measured = list.filter((e) => e.variants.some((v) => v.success_ci95));
  if (!measured.length) {
    blank(node);
    mark('experiments', 'No outcomes yet: report them with `client.feedback(job_id, success=True)` for the experiment\'s jobs.');
    return;
  }
  plot(node, measured.slice(0, 6).map((e) => {
    const vs = e.variants.filter((v) => v.success_ci95);
    const rate = vs.map((v) => 100 * v.success_rate);
    return {
      type: 'bar', name: label(e.experiment), width: 0.5,
      x: [vs.map(() => label(e.experiment)), vs.map((v) => label(v.name))], y: rate,
      customdata: vs.map((v) => v.outcomes),
      error_y: { type: 'data', symmetric: false, visible: true, thickness: 2, width: 10,
        color: '#0f172a',
        array: vs.map((v, i) => 100 * v.success_ci95[1] - rate[i]),
        arrayminus: vs.map((v, i) => rate[i] - 100 * v.success_ci95[0]) },
      hovertemplate: '%{x}: %{y:.1f}% of %{customdata} outcomes<extra></extra>',
    };
  }), { yaxis: { range: [0, 105], ticksuffix: '%', title: { text: 'success' } },
    barmode: 'overlay', showlegend: false });
  mark('experiments');
}

function deliveries(report) {
  return Object.entries(report).map(([channel, outcome]) => `${channel}: ${outcome}`).join(', ');
}

const ALERT_KINDS = { error_rate: 'error rate', avg_latency_ms: 'mean latency',
  p95_latency_ms: 'p95 latency', cost_per_request: 'cost per request' };

/** An operational alert's figure in its unit; '–' where there is none. */
function alertFigure(kind, v) {
  if (v === null || v === undefined) return '–';
  return kind === 'error_rate' ? pct(v) : kind === 'cost_per_request' ? usd(v) : ms(v);
}

function operationalAlerts(op) {
  const rows = op.alerts.map((a) => {
    const firing = a.state === 'firing';
    return [(firing ? a.fired_at : a.resolved_at).slice(0, 16).replace('T', ' '),
      ALERT_KINDS[a.kind] ?? a.kind, `${a.scope} ${a.target}`,
      badge(a.state, firing ? 'bad' : 'ok'),
      `${alertFigure(a.kind, firing ? a.value : a.resolved_value)} (over ${
        alertFigure(a.kind, a.threshold)} fires, under ${alertFigure(a.kind, a.resolve_below)} resolves)`,
      deliveries(firing ? a.deliveries : a.resolve_deliveries)];
  });
  table($('table-op-alerts'), ['Since (UTC)', 'Figure', 'Of', 'State', 'Value', 'Delivered'],
    rows);
  $('table-op-alerts').hidden = !rows.length;
  $('op-alert-figures').replaceChildren(el('span', { class: 'big' }, String(op.firing)),
    op.firing === 1 ? ' operational alert firing' : ' operational alerts firing');
  $('op-alert-figures').hidden = !rows.length;
  return rows.length;
}

export function alerts(page) {
  const shown = operationalAlerts(page.operational ?? { firing: 0, alerts: [] });
  const rows = page.alerts.map((a) => [
    a.created_at.slice(0, 16).replace('T', ' '), a.budget,
    badge(a.level, a.level === 'exceeded' ? 'bad' : 'warn'),
    `${usd(a.spent_usd)} of ${usd(a.limit_usd)}`, deliveries(a.deliveries),
  ]);
  table($('table-alerts'), ['When (UTC)', 'Budget', 'Level', 'Spent', 'Delivered'], rows);
  $('table-alerts').hidden = !rows.length;
  mark('alerts', rows.length || shown ? undefined
    : 'No alerts yet: beat (`llmfleet beat`) records a budget alert when a budget passes its alert threshold, and an operational alert when a tier, model or agent passes a `[monitoring]` threshold.');
}

const LIMIT_UNITS = { rpm: '/min', tpm: ' tokens/min', concurrency: ' in flight' };

export function limits(report) {
  const rows = report.limits.map((l) => {
    const share = l.used / l.limit;
    return [l.name, l.scope, l.kind, l.used.toLocaleString('en'),
      `${l.limit.toLocaleString('en')}${LIMIT_UNITS[l.kind] ?? ''}`,
      badge(pct(share), share >= 1 ? 'bad' : share >= 0.8 ? 'warn' : 'ok'), l.mode,
      l.rejected.toLocaleString('en'), l.delayed.toLocaleString('en')];
  });
  const parked = report.parked_jobs;
  $('limit-figures').replaceChildren(el('span', { class: 'big' }, String(parked)),
    parked === 1 ? ' job parked' : ' jobs parked', ', waiting for a limit or a quota');
  table($('table-limits'), ['Limit', 'Scope', 'Kind', 'Used', 'Size', 'Share', 'Mode',
    'Rejected', 'Delayed'], rows);
  $('table-limits').hidden = !rows.length;
  mark('limits', rows.length ? undefined
    : 'No limits: add `[[limits]]` to the fleet file (rpm, tpm, concurrency), give a fleet key its own (`llmfleet keys create --rpm 60`), or a model or provider an rpm / tpm quota.');
}

function healthItem(name, kind, detail) {
  return el('li', { class: kind }, el('span', { class: 'dot', 'aria-hidden': 'true' }),
    el('strong', {}, name), el('span', {}, detail));
}

export function health(report, fleet) {
  const items = [];
  const part = (p) => (p && p.ok ? 'ok' : 'bad');
  items.push(healthItem('Redis', part(report.redis), report.redis?.ok ? 'answers' : `down (${report.redis?.error ?? 'unreachable'})`));
  items.push(healthItem('Postgres', part(report.postgres), report.postgres?.ok ? 'answers' : `down (${report.postgres?.error ?? 'unreachable'})`));
  const beat = report.beat;
  if (beat) {
    items.push(healthItem('Beat', beat.ok ? 'ok' : 'warn', beat.last_run === null
      ? 'no heartbeat yet: start llmfleet beat'
      : `last run ${Math.round(beat.age_s)} s ago${beat.ok ? '' : ' (stale)'}`));
  }
  if (report.workers) {
    const idle = report.workers.queues_without;
    items.push(healthItem('Workers', idle.length ? 'bad' : 'ok',
      `${report.workers.up} up${idle.length ? `; no worker for ${idle.join(', ')}` : ''}`));
  }
  const ledger = report.ledger;
  if (ledger) {
    const dead = ledger.dead_letters;
    items.push(healthItem('Ledger', dead ? 'warn' : 'ok', `${ledger.spooled} row${ledger.spooled === 1 ? '' : 's'} spooled`
      + (dead ? ` · ${dead} dead letter${dead === 1 ? '' : 's'}: llmfleet ledger dead-letters` : ' · no dead letters')));
  }
  const cooling = report.providers_in_cooldown ?? [];
  for (const provider of fleet?.providers ?? []) {
    const mine = cooling.filter((c) => c.route.startsWith(`${provider.name}:`));
    items.push(healthItem(`Provider ${provider.name}`, mine.length ? 'warn' : 'ok', mine.length
      ? `cool-down: ${mine.map((c) => `${c.route} (${c.cooldown_left_s ?? '?'} s)`).join(', ')}`
      : `no cool-down · ${provider.models.length} model${provider.models.length === 1 ? '' : 's'}`));
  }
  $('health-list').replaceChildren(el('li', { class: report.status === 'ok' ? 'ok' : 'bad' },
    el('span', { class: 'dot', 'aria-hidden': 'true' }), el('strong', {}, 'Fleet'),
    el('span', {}, report.status === 'ok' ? 'healthy' : 'degraded')), ...items);
  mark('health');
}

const OUTCOME_BADGES = { ok: 'ok', refused: 'warn', error: 'bad' };

/** The audit log's newest rows (`/audit`): who did what to which resource, and how it ended. */
export function audit(page) {
  const rows = page.entries.map((a) => [
    a.at.slice(0, 19).replace('T', ' '), a.actor, a.action, a.resource,
    badge(a.outcome, OUTCOME_BADGES[a.outcome] ?? 'warn'), a.address ?? '–',
  ]);
  table($('table-audit'), ['When (UTC)', 'Actor', 'Action', 'Resource', 'Outcome', 'Address'],
    rows);
  $('table-audit').hidden = !rows.length;
  mark('audit', rows.length ? undefined
    : 'No administrative actions in the last 30 days: making or revoking a key (`llmfleet keys create`), putting a template, starting an experiment and logging in here are recorded; `llmfleet audit` lists them.');
}
