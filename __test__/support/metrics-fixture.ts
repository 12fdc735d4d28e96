// A metrics snapshot shaped as the native engine's (handle.metrics()), with every family of
// the telemetry contract, for the renderer's tests (metrics-format.spec.ts) and the fake handles.
import type { MetricFamily, MetricSeries, MetricsSnapshot } from '../../lib/telemetry/snapshot';

const BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

const labels = (pairs: Record<string, string>) => Object.entries(pairs).map(([name, value]) => ({ name, value }));

/** A histogram series from its observations (seconds). */
export function histogramSeries(pairs: Record<string, string>, observations: readonly number[], bounds = BOUNDS): MetricSeries {
  return {
    labels: labels(pairs),
    value: observations.length,
    bounds: [...bounds],
    cumulative: bounds.map((b) => observations.filter((o) => o <= b).length),
    sum: observations.reduce((a, b) => a + b, 0),
  };
}

const family = (name: string, kind: string, help: string, series: MetricSeries[], unit = ''): MetricFamily => ({ name, kind, help, unit, series });
const series = (pairs: Record<string, string>, value: number): MetricSeries => ({ labels: labels(pairs), value });

/** Every contract family, some with series, some empty (as after a fresh start). */
export function fullSnapshot(): MetricsSnapshot {
  return {
    families: [
      family('authpipe_connections', 'gauge', 'Connections in this process\'s cache, by provider and status.', [
        series({ provider: 'attio', status: 'active' }, 2),
        series({ provider: 'attio', status: 'revoked' }, 1),
        series({ provider: 'oidc', status: 'degraded' }, 1),
      ]),
      family('authpipe_refreshes_total', 'counter', 'Refresh attempts that reached the provider, by outcome.', [
        series({ provider: 'oidc', outcome: 'ok' }, 5),
        series({ provider: 'oidc', outcome: 'revoked' }, 1),
        series({ provider: 'oidc', outcome: 'transient' }, 2),
      ]),
      family('authpipe_refresh_duration_seconds', 'histogram', "The token request's round trip.", [histogramSeries({ provider: 'oidc', outcome: 'ok' }, [0.004, 0.02, 0.02, 0.3, 12])], 'seconds'),
      family('authpipe_probes_total', 'counter', 'Health probes, by outcome.', [series({ provider: 'attio', outcome: 'ok' }, 3)]),
      family('authpipe_probe_duration_seconds', 'histogram', "The identity request's round trip.", [], 'seconds'),
      family('authpipe_token_requests_in_flight', 'gauge', 'Refresh and probe requests sent and not yet answered.', [series({ provider: 'oidc' }, 0)]),
      family('authpipe_provider_concurrency_waits_total', 'counter', 'Requests that waited for a free slot (providerConcurrency).', []),
      family('authpipe_credential_requests_total', 'counter', 'getCredential calls served, by where from.', [
        series({ provider: 'oidc', outcome: 'native_hit' }, 7),
        series({ provider: 'oidc', outcome: 'store_read' }, 1),
      ]),
      family('authpipe_lease_takeovers_total', 'counter', 'Leases taken over from another process after they ran out.', [series({}, 0)]),
      family('authpipe_change_feed_lag_seconds', 'histogram', "Another process's write to this cache.", [histogramSeries({}, [0.002, 0.003])], 'seconds'),
      family('authpipe_change_feed_resyncs_total', 'counter', 'Full reloads after the feed may have missed changes.', [series({}, 0)]),
      family('authpipe_store_errors_total', 'counter', 'Store operations that failed.', [series({}, 0)]),
      family('authpipe_store_reconnects_total', 'counter', 'The store answering again after failing.', [series({}, 0)]),
      family('authpipe_store_up', 'gauge', '1 while the store answers, 0 after a failure until it answers again.', [series({}, 1)]),
      family('authpipe_seconds_since_last_successful_refresh', 'gauge', 'Seconds since the last successful refresh, per provider.', [series({ provider: 'oidc' }, 1.25)], 'seconds'),
    ],
  };
}
