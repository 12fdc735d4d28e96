// The OpenTelemetry path: the metrics as instruments on a real MeterProvider of
// @opentelemetry/sdk-metrics, exported by its in-memory exporter; first on a stand-in handle
// (the instruments and their values exactly), then through the real flow against the
// authorization server (refresh, revocation, probe).
import { AggregationTemporality, DataPointType, InMemoryMetricExporter, MeterProvider, PeriodicExportingMetricReader, type MetricData } from '@opentelemetry/sdk-metrics';
import { Authpipe, AuthpipeError } from '..';
import { attachTelemetry, telemetryOptions } from '../lib/telemetry/attach';
import { MemoHitTally } from '../lib/telemetry/memo-hits';
import { DURATION_BOUNDS_SECONDS, METER_NAME } from '../lib/telemetry/otel';
import { testStore } from './helpers';
import { FakeTelemetryHandle } from './support/fake-telemetry-handle';
import { fullSnapshot } from './support/metrics-fixture';
import { runFlow, startRig, TENANT, until, USERS, type FlowRig } from './support/telemetry-flow';

/** A provider whose metrics are exported on demand (`collect()`), cumulative. */
function sdk() {
  const exporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
  const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 3_600_000 });
  const provider = new MeterProvider({ readers: [reader] });
  return {
    provider,
    /** Collects now; the metrics of this package's meter, by name. */
    async collect(): Promise<Map<string, MetricData>> {
      exporter.reset();
      await reader.forceFlush();
      const scopes = exporter.getMetrics().flatMap((r) => r.scopeMetrics);
      return new Map(scopes.filter((s) => s.scope.name === METER_NAME).flatMap((s) => s.metrics.map((m): [string, MetricData] => [m.descriptor.name, m])));
    },
    shutdown: () => provider.shutdown(),
  };
}

/** A data point's value by its attributes, as `provider/outcome` (or `provider/status`). */
function points(metric: MetricData | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const p of metric?.dataPoints ?? []) out[Object.values(p.attributes).join('/')] = p.value;
  return out;
}

describe('on a stand-in handle', () => {
  test('every counter and gauge of the snapshot is an observable instrument, read at each collection', async () => {
    const otel = sdk();
    const handle = new FakeTelemetryHandle();
    const tally = new MemoHitTally();
    tally.counter('oidc').count = 4;
    const stop = attachTelemetry(handle, telemetryOptions({ meterProvider: otel.provider }), tally);
    const metrics = await otel.collect();
    // (A family with no series, and the histograms before a record, have no data point: the SDK leaves them out.)
    const observed = fullSnapshot().families.filter((f) => f.kind !== 'histogram' && f.series.length > 0).map((f) => f.name);
    expect([...metrics.keys()].sort()).toEqual(observed.sort());
    expect(metrics.get('authpipe_refreshes_total')).toMatchObject({ descriptor: { unit: '' }, dataPointType: DataPointType.SUM, isMonotonic: true });
    expect(points(metrics.get('authpipe_refreshes_total'))).toEqual({ 'oidc/ok': 5, 'oidc/revoked': 1, 'oidc/transient': 2 });
    expect(points(metrics.get('authpipe_connections'))).toEqual({ 'attio/active': 2, 'attio/revoked': 1, 'oidc/degraded': 1 });
    expect(metrics.get('authpipe_connections')!.dataPointType).toBe(DataPointType.GAUGE);
    expect(metrics.get('authpipe_seconds_since_last_successful_refresh')!.descriptor.unit).toBe('s');
    // Memo hits join the engine's counts.
    expect(points(metrics.get('authpipe_credential_requests_total'))).toEqual({ 'oidc/native_hit': 7, 'oidc/store_read': 1, 'oidc/memo_hit': 4 });
    // One snapshot per collection, for all instruments (one batch callback).
    const before = handle.snapshots;
    handle.snapshot.families[1]!.series[0]!.value = 6;
    expect(points((await otel.collect()).get('authpipe_refreshes_total'))['oidc/ok']).toBe(6);
    expect(handle.snapshots - before).toBe(1);
    stop();
    await otel.collect();
    expect(handle.snapshots - before).toBe(1); // no longer observed
    await otel.shutdown();
  });

  test('the duration histograms are recorded from refresh and probe records, in seconds, with provider and outcome', async () => {
    const otel = sdk();
    const handle = new FakeTelemetryHandle();
    attachTelemetry(handle, telemetryOptions({ meterProvider: otel.provider }), new MemoHitTally());
    handle.send('info', 'refresh.succeeded', { provider: 'oidc', tenantId: TENANT, userId: 'u', reason: 'forced', durationMs: 120, expiresAt: 1 });
    handle.send('warn', 'refresh.failed', { provider: 'oidc', tenantId: TENANT, userId: 'u', outcome: 'transient', code: 'http_500', durationMs: 40 });
    handle.send('debug', 'probe.succeeded', { provider: 'attio', durationMs: 8 });
    handle.send('warn', 'probe.failed', { provider: 'attio', outcome: 'revoked', code: 'inactive', durationMs: 3000 });
    handle.send('info', 'tenant_key.rotated', { tenantId: TENANT, generation: 2, resealed: 3 }); // no duration: no histogram
    const metrics = await otel.collect();
    const refresh = metrics.get('authpipe_refresh_duration_seconds')!;
    expect(refresh).toMatchObject({ descriptor: { unit: 's' }, dataPointType: DataPointType.HISTOGRAM });
    const byOutcome = points(refresh) as Record<string, { count: number; sum: number; buckets: { boundaries: number[] } }>;
    expect(Object.keys(byOutcome).sort()).toEqual(['oidc/ok', 'oidc/transient']);
    expect(byOutcome['oidc/ok']).toMatchObject({ count: 1, sum: 0.12, buckets: { boundaries: [...DURATION_BOUNDS_SECONDS] } });
    expect(byOutcome['oidc/transient']).toMatchObject({ count: 1, sum: 0.04 });
    expect(points(metrics.get('authpipe_probe_duration_seconds'))).toMatchObject({ 'attio/ok': { count: 1, sum: 0.008 }, 'attio/revoked': { count: 1, sum: 3 } });
    // Only provider and outcome: the record's tenant and user ids stay out of the attributes.
    for (const p of refresh.dataPoints) expect(Object.keys(p.attributes).sort()).toEqual(['outcome', 'provider']);
    await otel.shutdown();
  });

  test('meterProvider must be a MeterProvider whose meter has the methods used', () => {
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (err) {
        return (err as Error).name === 'AuthpipeError' ? `${(err as AuthpipeError).code}: ${(err as Error).message}` : `not an AuthpipeError: ${String(err)}`;
      }
      return 'accepted';
    };
    expect(code(() => telemetryOptions({ meterProvider: {} }))).toBe('INVALID_ARGUMENT: meterProvider must be an OpenTelemetry MeterProvider: it has no getMeter method');
    expect(code(() => telemetryOptions({ meterProvider: { getMeter: () => ({ createHistogram() {} }) } }))).toMatch(/^INVALID_ARGUMENT: .*without createObservableCounter, createObservableGauge, addBatchObservableCallback, removeBatchObservableCallback$/);
    expect(code(() => telemetryOptions({ meterProvider: { getMeter: () => 'meter' } }))).toBe('INVALID_ARGUMENT: meterProvider.getMeter() did not return a Meter');
    expect(code(() => new Authpipe({ store: ':memory:', meterProvider: 42 as never }))).toBe('INVALID_ARGUMENT: meterProvider must be an object');
  });
});

describe('through the real flow', () => {
  let rig: FlowRig;
  let otel: ReturnType<typeof sdk>;
  beforeAll(async () => {
    otel = sdk();
    rig = await startRig({ store: testStore(), meterProvider: otel.provider });
  });
  afterAll(async () => {
    await rig.close();
    await otel.shutdown();
  });

  test('a refresh, a transient failure, a revocation and probes show in the instruments', async () => {
    const flow = await runFlow(rig);
    // Histograms are recorded as the engine's records reach JS: collect until they all have.
    const metrics = await until('the refresh and probe durations', async () => {
      const m = await otel.collect();
      const refresh = points(m.get('authpipe_refresh_duration_seconds')) as Record<string, { count: number } | undefined>;
      const probe = points(m.get('authpipe_probe_duration_seconds')) as Record<string, { count: number } | undefined>;
      return refresh['oidc/ok'] && refresh['oidc/transient'] && refresh['oidc/revoked'] && probe['oidc/ok'] && probe['oidc/revoked'] ? m : undefined;
    });
    const refreshes = points(metrics.get('authpipe_refreshes_total')) as Record<string, number>;
    expect(refreshes['oidc/ok']).toBeGreaterThanOrEqual(1);
    expect(refreshes['oidc/transient']).toBeGreaterThanOrEqual(1);
    expect(refreshes['oidc/revoked']).toBe(1);
    const probes = points(metrics.get('authpipe_probes_total')) as Record<string, number>;
    expect(probes).toMatchObject({ 'oidc/ok': 1, 'oidc/revoked': 1 });
    expect(points(metrics.get('authpipe_connections'))).toMatchObject({ 'oidc/revoked': 2 });
    const credentialRequests = points(metrics.get('authpipe_credential_requests_total')) as Record<string, number>;
    expect(credentialRequests['oidc/memo_hit']).toBeGreaterThanOrEqual(flow.warmCalls);
    // The histograms agree with the counters they shadow (every attempt that reached the server).
    const refreshDurations = points(metrics.get('authpipe_refresh_duration_seconds')) as Record<string, { count: number; sum: number }>;
    expect(refreshDurations['oidc/revoked']!.count).toBe(1);
    expect(refreshDurations['oidc/ok']!.sum).toBeGreaterThan(0);
    // Bucketed as the Prometheus text buckets them.
    const text = await rig.authpipe.metrics();
    const promBounds = [...text.matchAll(/^authpipe_refresh_duration_seconds_bucket\{provider="oidc",outcome="ok",le="([^"]+)"\}/gm)].map((m) => m[1]).filter((le) => le !== '+Inf').map(Number);
    expect((refreshDurations['oidc/ok'] as unknown as { buckets: { boundaries: number[] } }).buckets.boundaries).toEqual(promBounds);
    // No attribute names a tenant, a user or carries a secret.
    for (const metric of metrics.values()) {
      for (const p of metric.dataPoints) {
        expect(Object.keys(p.attributes).every((k) => ['provider', 'status', 'outcome'].includes(k))).toBe(true);
        const values = Object.values(p.attributes).join(' ');
        for (const id of [TENANT, ...Object.values(USERS)]) expect(values).not.toContain(id);
        for (const secret of rig.planted) if (!secret.bytes) expect(values).not.toContain(secret.value);
      }
    }
  });
});
