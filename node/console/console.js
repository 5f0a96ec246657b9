// meshd console: plain JavaScript, no build step, no external resources.
// Everything shown is built with DOM nodes and textContent (never HTML text), so names,
// ids and messages from the API cannot inject markup.
'use strict';

(function () {
  const TOKEN_KEY = 'meshd-token';
  const POLL_MS = 2000;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  // ---------- helpers ----------

  function $(id) { return document.getElementById(id); }

  // el('td', {class: 'num', 'data-x': 'y'}, 'text', childNode, ...)
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    append(e, children);
    return e;
  }

  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(SVG_NS, tag);
    setAttrs(e, attrs);
    append(e, children);
    return e;
  }

  function setAttrs(e, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k.startsWith('on')) throw new Error('no inline handlers');
      e.setAttribute(k, String(v));
    }
  }

  function append(e, children) {
    for (const c of children) {
      if (c === undefined || c === null) continue;
      e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }

  function fillBody(table, rows) {
    const body = table.tBodies[0];
    clear(body);
    for (const r of rows) body.appendChild(r);
  }

  function fmtTime(ms) {
    if (ms === undefined || ms === null) return '–';
    try { return new Date(ms).toISOString().replace('T', ' ').replace('Z', ' UTC'); } catch (_) { return String(ms); }
  }

  function fmtNum(n, digits) {
    if (n === undefined || n === null) return '–';
    return typeof n === 'number' ? n.toFixed(digits || 0) : String(n);
  }

  function showError(msg) {
    const e = $('error');
    e.textContent = msg || '';
    e.classList.toggle('hidden', !msg);
  }

  // ---------- API ----------

  class Unauthorized extends Error {}

  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) opts.headers.Authorization = 'Bearer ' + token;
    if (opts.body !== undefined && typeof opts.body !== 'string') {
      opts.body = JSON.stringify(opts.body);
      opts.headers['Content-Type'] = 'application/json';
    }
    const resp = await fetch(path, opts);
    if (resp.status === 401) {
      showLogin(true);
      throw new Unauthorized('this node wants a token');
    }
    const text = await resp.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
    if (!resp.ok) {
      const err = new Error((body && body.error && body.error.message) || (resp.status + ' ' + resp.statusText));
      err.status = resp.status;
      err.code = body && body.error && body.error.code;
      throw err;
    }
    return body;
  }

  function showLogin(on) {
    $('login').classList.toggle('hidden', !on);
    $('logout').classList.toggle('hidden', on || !sessionStorage.getItem(TOKEN_KEY));
    for (const v of document.querySelectorAll('.view')) {
      if (on) v.classList.add('hidden');
    }
    if (!on) route();
  }

  // ---------- mesh map ----------

  function layout(names) {
    // Clusters on a circle (two on a line), the first at the left.
    const cx = 320, cy = 200, r = names.length <= 2 ? 200 : 150;
    const pos = {};
    names.forEach((n, i) => {
      const a = Math.PI + (2 * Math.PI * i) / Math.max(names.length, 1);
      pos[n] = { x: cx + r * Math.cos(a), y: cy + r * Math.sin(a) * (names.length <= 2 ? 0 : 1) };
    });
    return pos;
  }

  function linkKey(a, b) { return [a, b].sort().join('|'); }

  function drawMesh(mesh) {
    const map = $('map');
    clear(map);
    const names = mesh.clusters.map((c) => c.name);
    const pos = layout(names);
    // This cluster's links, with their state; other links from the routes it knows.
    const edges = new Map();
    for (const l of mesh.links) {
      const state = l.paused ? 'paused' : (l.stalled ? 'stalled' : l.state);
      const rtt = l.rtt_ms === null || l.rtt_ms === undefined ? '' : 'RTT ' + fmtNum(l.rtt_ms, 1) + ' ms · ';
      edges.set(linkKey(mesh.cluster, l.peer), {
        a: mesh.cluster, b: l.peer, state: state,
        label: rtt + 'lag ' + l.lag_events + ' ev / ' + fmtNum(l.lag_seconds, 1) + ' s',
      });
    }
    for (const path of Object.values(mesh.routes || {})) {
      if (!Array.isArray(path)) continue;
      for (let i = 0; i + 1 < path.length; i++) {
        const k = linkKey(path[i], path[i + 1]);
        if (!edges.has(k)) edges.set(k, { a: path[i], b: path[i + 1], state: 'route', label: 'via route' });
      }
    }
    for (const [k, e] of edges) {
      const p = pos[e.a], q = pos[e.b];
      if (!p || !q) continue;
      map.appendChild(svg('g', { class: 'link ' + e.state, 'data-link': k, 'data-state': e.state },
        svg('line', { x1: p.x, y1: p.y, x2: q.x, y2: q.y }),
        svg('text', { class: 'label', x: (p.x + q.x) / 2, y: (p.y + q.y) / 2 - 12 }, e.label)));
    }
    for (const c of mesh.clusters) {
      const p = pos[c.name];
      map.appendChild(svg('g', { class: 'cluster' + (c.name === mesh.cluster ? ' self' : ''), 'data-cluster': c.name },
        svg('circle', { cx: p.x, cy: p.y, r: 42 }),
        svg('text', { class: 'name', x: p.x, y: p.y }, c.name),
        svg('text', { class: 'region', x: p.x, y: p.y + 56 }, [c.region, c.cloud].filter(Boolean).join(' · '))));
    }
    fillBody($('links'), mesh.links.map((l) => el('tr', { 'data-peer': l.peer },
      el('td', {}, l.peer),
      el('td', { class: 'state-' + l.state }, l.state + (l.paused ? ' (paused)' : '') + (l.stalled ? ' (stalled)' : '')),
      el('td', { class: 'num' }, l.rtt_ms === null || l.rtt_ms === undefined ? '–' : fmtNum(l.rtt_ms, 1) + ' ms'),
      el('td', { class: 'num' }, l.lag_events),
      el('td', { class: 'num' }, fmtNum(l.lag_seconds, 1)),
      el('td', { class: 'num' }, l.events_sent),
      el('td', { class: 'num' }, l.events_received),
      el('td', {}, l.last_error || ''))));
  }

  async function refreshMesh() {
    try {
      const mesh = await api('/v1/mesh');
      $('mesh-name').textContent = mesh.mesh ? '(' + mesh.mesh + ')' : '';
      drawMesh(mesh);
    } catch (e) {
      if (e.code !== 'no_mesh') throw e;
      // A node without a bridge: one cluster, no links.
      const c = await api('/v1/cluster');
      $('mesh-name').textContent = '(no federation bridge)';
      drawMesh({ cluster: c.cluster, clusters: [{ name: c.cluster }], links: [], routes: {} });
    }
  }

  // ---------- topics ----------

  let lastTopics = null; // {at, stored: {topic: n}}

  async function refreshTopics() {
    const list = await api('/v1/topics');
    const now = Date.now();
    const stored = {};
    const rows = list.topics.map((t) => {
      const parts = Object.entries(t.partitions || {});
      const ends = parts.map(([p, o]) => p + ': ' + o.end).join(', ');
      const total = parts.reduce((s, [, o]) => s + (o.end - o.start), 0);
      const head = parts.reduce((s, [, o]) => s + o.end, 0);
      stored[t.name] = head;
      let rate = '–';
      if (lastTopics && lastTopics.stored[t.name] !== undefined && now > lastTopics.at) {
        rate = fmtNum(((head - lastTopics.stored[t.name]) * 1000) / (now - lastTopics.at), 1);
      }
      const ret = t.config.retention || {};
      const retention = [ret.max_age_secs ? ret.max_age_secs + ' s' : null, ret.max_bytes ? ret.max_bytes + ' B/partition' : null]
        .filter(Boolean).join(', ') || 'forever';
      return el('tr', { 'data-topic': t.name },
        el('td', {}, t.name),
        el('td', { class: 'num' }, t.config.partitions),
        el('td', {}, ends),
        el('td', { class: 'num' }, total),
        el('td', { class: 'num' }, rate),
        el('td', {}, retention),
        el('td', {}, (t.config.replicate_to || []).join(', ')));
    });
    lastTopics = { at: now, stored: stored };
    fillBody($('topics'), rows);
  }

  // ---------- subscriptions ----------

  function sinkText(sink) {
    if (!sink) return '';
    if (sink.webhook) return 'webhook ' + sink.webhook.url;
    if (sink.pull !== undefined) return 'pull';
    return Object.keys(sink).join(', ');
  }

  async function refreshSubscriptions() {
    const list = await api('/v1/subscriptions');
    fillBody($('subscriptions'), list.subscriptions.map((s) => el('tr', { 'data-subscription': s.name },
      el('td', {}, el('a', { class: 'sub', href: '#subscription/' + encodeURIComponent(s.name) }, s.name)),
      el('td', {}, s.topic),
      el('td', {}, s.group || s.name),
      el('td', {}, sinkText(s.sink)),
      el('td', {}, s.filter ? JSON.stringify(s.filter) : ''))));
  }

  async function refreshSubscription(name) {
    const s = await api('/v1/subscriptions/' + encodeURIComponent(name) + '/status');
    $('sub-name').textContent = s.name;
    const facts = [
      ['topic', s.topic], ['group', s.group + ' (' + s.mode + ')'],
      ['delivered by', s.node + ' in ' + (s.active_cluster || s.cluster) + (s.delivering ? '' : ' (not delivering now)')],
      ['backlog', s.backlog_events + ' events, oldest ' + fmtNum(s.backlog_seconds, 1) + ' s'],
      ['in flight', s.in_flight], ['delivered', s.delivered], ['retried', s.retried],
      ['dead letters', s.dead_lettered], ['filtered out', s.filtered_out],
      ['last error', s.last_error ? s.last_error.message + ' at ' + fmtTime(s.last_error.at_ms) : 'none'],
    ];
    const dl = $('sub-status');
    clear(dl);
    for (const [k, v] of facts) {
      dl.appendChild(el('dt', {}, k));
      dl.appendChild(el('dd', { 'data-fact': k }, v));
    }
    fillBody($('sub-partitions'), Object.entries(s.partitions || {}).map(([p, st]) => el('tr', {},
      el('td', { class: 'num' }, p), el('td', { class: 'num' }, st.committed), el('td', { class: 'num' }, st.end),
      el('td', { class: 'num' }, st.backlog_events), el('td', { class: 'num' }, fmtNum(st.backlog_seconds, 1)))));
  }

  // ---------- trace ----------

  const RECORD_FIELDS = ['cluster', 'node', 'at_ms', 'kind'];

  async function runTrace(source, id) {
    $('trace-title').textContent = 'Searching ' + source + ' / ' + id + ' …';
    fillBody($('trace-records'), []);
    fillBody($('trace-clusters'), []);
    const q = '/v1/trace?source=' + encodeURIComponent(source) + '&id=' + encodeURIComponent(id);
    let t;
    try {
      t = await api(q);
    } catch (e) {
      $('trace-title').textContent = 'No trace for ' + source + ' / ' + id + ': ' + e.message;
      throw e;
    }
    $('trace-title').textContent = t.records.length + ' record(s) for ' + t.source + ' / ' + t.id;
    fillBody($('trace-records'), t.records.map((r) => {
      const details = Object.entries(r).filter(([k]) => !RECORD_FIELDS.includes(k))
        .map(([k, v]) => k + '=' + (typeof v === 'string' ? v : JSON.stringify(v))).join(' ');
      return el('tr', { 'data-kind': r.kind, 'data-cluster': r.cluster },
        el('td', {}, fmtTime(r.at_ms)), el('td', {}, r.cluster), el('td', {}, r.node),
        el('td', {}, r.kind), el('td', {}, details));
    }));
    fillBody($('trace-clusters'), t.clusters.map((c) => el('tr', { 'data-cluster': c.cluster },
      el('td', {}, c.cluster), el('td', {}, c.answered ? 'yes' : 'no'),
      el('td', { class: 'num' }, c.records), el('td', {}, c.error || ''))));
  }

  // ---------- filter sandbox ----------

  async function runFilter() {
    const verdict = $('filter-verdict');
    const out = $('filter-output');
    verdict.textContent = '';
    out.textContent = '';
    let pattern, event;
    try {
      pattern = JSON.parse($('filter-pattern').value);
      event = JSON.parse($('filter-event').value);
    } catch (e) {
      verdict.textContent = 'Not JSON: ' + e.message;
      return;
    }
    try {
      const r = await api('/v1/filters/test', { method: 'POST', body: { pattern: pattern, event: event } });
      verdict.textContent = r.matched ? 'matches' : 'does not match';
      verdict.className = r.matched ? 'ok' : 'failed';
      out.textContent = JSON.stringify(r, null, 2);
    } catch (e) {
      verdict.textContent = 'Refused: ' + e.message;
      verdict.className = 'failed';
    }
  }

  // ---------- drills ----------

  async function refreshDrills() {
    const list = await api('/v1/drills/reports');
    const ms = (v) => (v === null || v === undefined ? '–' : v + ' ms');
    fillBody($('drills'), list.reports.map((s) => {
      const r = s.report;
      const ok = r.lost === 0 && r.reordered === 0;
      return el('tr', { 'data-report': s.id },
        el('td', {}, fmtTime(s.received_at_ms)), el('td', {}, r.scenario), el('td', {}, r.mode),
        el('td', { class: ok ? 'ok' : 'failed' }, ok ? 'OK' : 'FAILED'),
        el('td', { class: 'num' }, r.acknowledged), el('td', { class: 'num' }, r.lost),
        el('td', { class: 'num' }, r.duplicated), el('td', { class: 'num' }, r.reordered),
        el('td', { class: 'num' }, ms(r.detection_ms)), el('td', { class: 'num' }, ms(r.recovery_ms)),
        el('td', {}, (r.notes || []).join('; ')));
    }));
  }

  // ---------- views and polling ----------

  let current = { view: 'mesh', arg: null };
  let timer = null;

  function parseHash() {
    const h = decodeURIComponent(location.hash.replace(/^#/, ''));
    if (h.startsWith('subscription/')) return { view: 'subscription', arg: h.slice('subscription/'.length) };
    const known = ['mesh', 'topics', 'subscriptions', 'trace', 'filters', 'drills'];
    return { view: known.includes(h) ? h : 'mesh', arg: null };
  }

  const refreshers = {
    mesh: refreshMesh,
    topics: refreshTopics,
    subscriptions: refreshSubscriptions,
    subscription: () => refreshSubscription(current.arg),
    drills: refreshDrills,
  };

  async function tick() {
    const f = refreshers[current.view];
    if (!f || !$('login').classList.contains('hidden')) return;
    try {
      await f();
      showError('');
    } catch (e) {
      if (!(e instanceof Unauthorized)) showError(e.message);
    }
  }

  function route() {
    current = parseHash();
    for (const v of document.querySelectorAll('.view')) v.classList.add('hidden');
    $('view-' + current.view).classList.remove('hidden');
    for (const a of document.querySelectorAll('#nav a')) {
      a.classList.toggle('active', a.dataset.view === current.view
        || (current.view === 'subscription' && a.dataset.view === 'subscriptions'));
    }
    if (current.view === 'topics') lastTopics = null;
    if (timer) clearInterval(timer);
    timer = null;
    tick();
    if (refreshers[current.view]) timer = setInterval(tick, POLL_MS);
  }

  async function whoami() {
    try {
      const c = await api('/v1/cluster');
      $('whoami').textContent = 'cluster ' + c.cluster + ' · node ' + c.node + (c.ready ? '' : ' (not ready)');
      document.title = 'meshd console: ' + c.cluster;
      showLogin(false);
    } catch (e) {
      if (!(e instanceof Unauthorized)) {
        showError(e.message);
        route();
      }
    }
  }

  function start() {
    $('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $('login-token').value.trim());
      $('login-token').value = '';
      whoami();
    });
    $('logout').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      location.reload();
    });
    $('trace-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      runTrace($('trace-source').value.trim(), $('trace-id').value.trim()).catch((e) => {
        if (!(e instanceof Unauthorized)) showError(e.message);
      });
    });
    $('filter-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      runFilter();
    });
    window.addEventListener('hashchange', route);
    whoami();
  }

  document.addEventListener('DOMContentLoaded', start);
})();
