// metrics() scraped by a real Prometheus (Debian's, which .ci/run installs): a test app on
// 127.0.0.1 serves authpipe.metrics() on /metrics as an app would, Prometheus scrapes it every
// second, and the series are read back through Prometheus' HTTP API after the real flow against
// the authorization server: a refresh, a transient failure, a revocation and probes.
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { PROMETHEUS_CONTENT_TYPE } from '..';
import { closeServer, listenOnLoopback, testStore } from './helpers';
import { PROMETHEUS_BINARY, startPrometheus, type PrometheusServer, type PromSample } from './support/prometheus';
import { runFlow, startRig, TENANT, until, USERS, type FlowRig } from './support/telemetry-flow';

/** The README's alerting rules, loaded into the server: each must evaluate over the real series. */
const ALERTS = join(__dirname, '..', 'examples', 'prometheus', 'authpipe-alerts.yml');
let rig: FlowRig;
let app: Server;
let prometheus: PrometheusServer;
const scraped: string[] = [];

beforeAll(async () => {
  rig = await startRig({ store: testStore() });
  // The app's own /metrics, as the README shows it.
  app = createServer((req, res) => {
    if (req.url !== '/metrics') return void res.writeHead(404).end();
    rig.authpipe.metrics().then(
      (text) => {
        scraped.push(text);
        res.writeHead(200, { 'content-type': PROMETHEUS_CONTENT_TYPE }).end(text);
      },
      () => res.writeHead(500).end(),
    );
  });
  const origin = await listenOnLoopback(app);
  prometheus = await startPrometheus([new URL(origin).host], [ALERTS]);
}, 60_000);

afterAll(async () => {
  await prometheus?.close();
  await closeServer(app);
  await rig.close();
});

const KEY_LABELS = ['provider', 'status', 'outcome', 'le'];

/** The value of each series of `promql`, by its `provider/status/outcome/le` labels (those it has). */
async function byLabels(promql: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const s of await prometheus.query(promql)) {
    out[KEY_LABELS.filter((k) => k in s.metric).map((k) => s.metric[k]).join('/')] = Number(s.value[1]);
  }
  return out;
}

test(`${PROMETHEUS_BINARY} scrapes metrics(); a refresh, a revocation and probes show up through its API`, async () => {
  const flow = await runFlow(rig);
  const scrapesBefore = scraped.length;
  // Poll Prometheus until a scrape taken after the flow holds every outcome (no fixed sleep).
  const refreshes = await until('the refresh outcomes in Prometheus', async () => {
    const r = await byLabels('authpipe_refreshes_total');
    return r['oidc/ok'] && r['oidc/transient'] && r['oidc/revoked'] ? r : undefined;
  });
  expect(refreshes['oidc/revoked']).toBe(1);
  const probes = await until('the probe outcomes', async () => {
    const p = await byLabels('authpipe_probes_total');
    return p['oidc/ok'] && p['oidc/revoked'] ? p : undefined;
  });
  expect(probes).toMatchObject({ 'oidc/ok': 1, 'oidc/revoked': 1 });
  expect(scraped.length).toBeGreaterThan(scrapesBefore);
  expect(await prometheus.targets()).toEqual([expect.objectContaining({ health: 'up', lastError: '' })]);

  expect(await byLabels('authpipe_connections')).toMatchObject({ 'oidc/revoked': 2 });
  const requests = await until('the memo hits', async () => {
    const r = await byLabels('authpipe_credential_requests_total');
    return r['oidc/memo_hit'] !== undefined ? r : undefined;
  });
  expect(requests['oidc/memo_hit']).toBeGreaterThanOrEqual(flow.warmCalls);
  // The histograms: one revoked refresh, counted in its +Inf bucket and its _count alike.
  expect(await byLabels('authpipe_refresh_duration_seconds_count{outcome="revoked"}')).toEqual({ 'oidc/revoked': 1 });
  expect(await byLabels('authpipe_refresh_duration_seconds_bucket{outcome="revoked",le="+Inf"}')).toEqual({ 'oidc/revoked/+Inf': 1 });
  const sinceRefresh = await byLabels('authpipe_seconds_since_last_successful_refresh');
  expect(sinceRefresh.oidc).toBeGreaterThanOrEqual(0);
  expect(sinceRefresh.oidc).toBeLessThan(60);
  // The README's alerts evaluate over the scraped series, without an error, and none fires here
  // (a revocation's new series is counted by increase() from its second sample on).
  const rules = await until('every alerting rule evaluated', async () => {
    const r = await prometheus.rules();
    return r.length === 5 && r.every((rule) => rule.health === 'ok') ? r : undefined;
  });
  expect(rules.map((r) => [r.name, r.lastError, r.state])).toEqual(
    ['AuthpipeConnectionsRevoked', 'AuthpipeRefreshesFailing', 'AuthpipeNoSuccessfulRefresh', 'AuthpipeStoreDown', 'AuthpipeSlowTokenEndpoint'].map((name) => [name, '', 'inactive']),
  );
  // The failing-refresh ratio the second rule compares with 0.2, over the real counters.
  expect((await byLabels('sum by (provider) (authpipe_refreshes_total{outcome!="ok"}) / sum by (provider) (authpipe_refreshes_total)')).oidc).toBeGreaterThan(0);

  // Every series: names under authpipe_, labels only provider/status/outcome (and le, job,
  // instance), no tenant or user id and no secret in any label value.
  const series: PromSample[] = await prometheus.query('{__name__=~"authpipe_.+"}');
  expect(series.length).toBeGreaterThan(20);
  const families = new Set(series.map((s) => s.metric.__name__!.replace(/_(bucket|sum|count)$/, '')));
  for (const name of ['authpipe_connections', 'authpipe_refreshes_total', 'authpipe_refresh_duration_seconds', 'authpipe_probes_total', 'authpipe_probe_duration_seconds', 'authpipe_credential_requests_total', 'authpipe_store_up']) {
    expect(families).toContain(name);
  }
  const allowed = new Set(['__name__', 'job', 'instance', 'provider', 'status', 'outcome', 'le']);
  for (const s of series) {
    expect(Object.keys(s.metric).filter((k) => !allowed.has(k))).toEqual([]);
    const values = Object.values(s.metric).join('\n');
    for (const id of [TENANT, ...Object.values(USERS)]) expect(values).not.toContain(id);
    for (const secret of rig.planted) if (!secret.bytes) expect(values).not.toContain(secret.value);
  }
  // Nor anywhere in what was served.
  const last = scraped.at(-1)!;
  for (const id of [TENANT, ...Object.values(USERS)]) expect(last).not.toContain(id);
  for (const secret of rig.planted) if (!secret.bytes) expect(last).not.toContain(secret.value);
  process.stdout.write(
    `prometheus: ${scraped.length} scrapes, ${series.length} authpipe_ series; authpipe_refreshes_total ${JSON.stringify(refreshes)}; excerpt:\n` +
      `${last.split('\n').filter((l) => /^(# (HELP|TYPE) authpipe_refreshes_total|authpipe_refreshes_total|authpipe_refresh_duration_seconds_(bucket|sum|count)\{.*outcome="ok"(,le="(0.05|\+Inf)")?\}|authpipe_credential_requests_total\{)/.test(l)).join('\n')}\n` +
      `query authpipe_refreshes_total{outcome="revoked"}: ${JSON.stringify(await prometheus.query('authpipe_refreshes_total{outcome="revoked"}'))}\n`,
  );
}, 90_000);
