// The dashboard's control: login and logout, the range and filters, and the refresh
// loop that reads the admin API (the session cookie goes with every same-origin fetch).

import * as panels from './panels.js';
import { el } from './charts.js';

const API = '/api/admin/ml-ops';
const REFRESH_MS = 5000;
const FLEET_EVERY = 12; // refreshes between re-reads of the filters' choices
const ADMIN_OFF = 'The admin API is off: set LLMFLEET_ADMIN_KEY where `llmfleet api` runs.';

const state = { range: '24h', agent: '', model: '', live: true, fleet: null, count: 0 };
let inflight = null;
let again = false;

const $ = (id) => document.getElementById(id);

class Unauthorized extends Error {}

async function getJson(path, { allowStatus = [] } = {}) {
  const response = await fetch(path, { headers: { accept: 'application/json' }, cache: 'no-store' });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok && !allowStatus.includes(response.status)) {
    throw new Error(`${path.split('?')[0]} answered ${response.status}`);
  }
  return response.json();
}

function show(view, message) {
  document.body.dataset.state = view;
  $('login').hidden = view !== 'login';
  $('dashboard').hidden = view === 'login';
  $('controls').hidden = view === 'login';
  const error = $('login-error');
  error.hidden = !message;
  error.textContent = message || '';
  if (view === 'login') $('key').focus();
}

function fillSelect(select, values, allLabel) {
  const chosen = select.value;
  select.replaceChildren(el('option', { value: '' }, allLabel),
    ...values.map((v) => el('option', { value: v }, v)));
  select.value = values.includes(chosen) ? chosen : '';
}

function query() {
  const params = new URLSearchParams({ time_range: state.range });
  if (state.agent) params.set('agent', state.agent);
  if (state.model) params.set('model', state.model);
  return params.toString();
}

function describeScope() {
  const parts = [`Last ${state.range}`];
  if (state.agent) parts.push(`agent ${state.agent}`);
  if (state.model) parts.push(`model ${state.model}`);
  $('scope').textContent = `${parts.join(' · ')} (budgets, queues, limits, experiments, alerts, health and the audit log are fleet-wide)`;
}

async function load() {
  const q = query();
  const range = state.range;
  if (!state.fleet || state.count % FLEET_EVERY === 0) {
    state.fleet = await getJson(`${API}/fleet`);
    fillSelect($('filter-agent'), state.fleet.agents, 'all agents');
    fillSelect($('filter-model'), state.fleet.models, 'all models');
  }
  const [overview, metrics, spend, experiments, alerts, health, limits, audit] = await Promise.all([
    getJson(`${API}/overview`), getJson(`${API}/metrics?${q}`), getJson(`${API}/spend?${q}`),
    getJson(`${API}/experiments`), getJson(`${API}/alerts?limit=15`),
    getJson(`${API}/health`, { allowStatus: [503] }), getJson(`${API}/limits`),
    getJson(`${API}/audit?since=30d&limit=20`),
  ]);
  describeScope();
  panels.view.filtered = Boolean(state.agent || state.model);
  const draw = [
    () => panels.kpis(metrics, range), () => panels.throughput(metrics, range),
    () => panels.latency(metrics, range), () => panels.costByModel(spend, range),
    () => panels.topSpenders(spend), () => panels.budgets(overview.budgets),
    () => panels.cache(metrics, range), () => panels.queues(overview),
    () => panels.experiments(experiments), () => panels.alerts(alerts),
    () => panels.health(health, state.fleet), () => panels.limits(limits),
    () => panels.audit(audit),
  ];
  await Promise.all(draw.map((f) => f()));
  state.count += 1;
  document.body.dataset.range = range;
  document.body.dataset.refreshes = String(state.count);
  $('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
}

/** One refresh at a time; a change asked for meanwhile runs right after it. */
async function refresh() {
  if (inflight) { again = true; return inflight; }
  inflight = (async () => {
    do {
      again = false;
      try {
        await load();
        if (document.body.dataset.state !== 'ready') show('ready');
      } catch (error) {
        if (error instanceof Unauthorized) { show('login', 'Your session has ended: log in again.'); return; }
        $('updated').textContent = `refresh failed: ${error.message}`;
        console.warn('dashboard refresh failed', error);
      }
    } while (again);
  })();
  try { await inflight; } finally { inflight = null; }
  return undefined;
}

async function login(event) {
  event.preventDefault();
  const input = $('key');
  const response = await fetch('/dashboard/login', {
    method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ key: input.value }), cache: 'no-store',
  });
  input.value = '';
  if (response.ok) { show('loading'); state.fleet = null; await refresh(); return; }
  const messages = {
    401: 'Wrong admin key.',
    503: ADMIN_OFF,
  };
  let message = messages[response.status];
  if (response.status === 429) {  // too many wrong keys from here: the server says how long
    const body = await response.json().catch(() => null);
    message = body?.error?.message ?? `Too many failed attempts: try again in ${response.headers.get('retry-after') ?? 'a minute'} s.`;
  }
  show('login', message || `Login failed (HTTP ${response.status}).`);
}

async function logout() {
  await fetch('/dashboard/logout', { method: 'POST', cache: 'no-store' });
  show('login', '');
}

function wire() {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  for (const button of document.querySelectorAll('.ranges button')) {
    button.addEventListener('click', () => {
      state.range = button.dataset.range;
      document.querySelectorAll('.ranges button').forEach(
        (b) => b.setAttribute('aria-pressed', String(b === button)));
      refresh();
    });
  }
  $('filter-agent').addEventListener('change', (e) => { state.agent = e.target.value; refresh(); });
  $('filter-model').addEventListener('change', (e) => { state.model = e.target.value; refresh(); });
  $('live').addEventListener('change', (e) => { state.live = e.target.checked; });
  setInterval(() => {
    if (state.live && !document.hidden && document.body.dataset.state === 'ready') refresh();
  }, REFRESH_MS);
}

async function start() {
  wire();
  const session = await getJson('/dashboard/session');
  if (session.authenticated) { show('loading'); await refresh(); return; }
  show('login', session.admin_api ? '' : ADMIN_OFF);
}

start();
