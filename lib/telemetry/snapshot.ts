/**
 * The metrics snapshot the native engine hands lib/ (`handle.metrics()`), typed by shape so
 * that the renderers here can be tested with fixtures, and the memo-hit series lib/ adds to it.
 * @internal
 */
import type { MemoHitTally } from './memo-hits';

/** One label of a series: only provider, status or outcome (never a tenant, user or secret). */
export interface MetricLabel {
  name: string;
  value: string;
}

/** One series of a family: its labels and value; histograms also carry their buckets. */
export interface MetricSeries {
  labels: MetricLabel[];
  /** A counter's or gauge's value; a histogram's count. */
  value: number;
  /** Histogram only: bucket upper bounds, ascending, without +Inf. */
  bounds?: number[];
  /** Histogram only: the cumulative count per bound (same length as `bounds`). */
  cumulative?: number[];
  /** Histogram only: the sum of the observations. */
  sum?: number;
}

/** One metric family: a Prometheus name, one line of help, a kind, a unit, its series. */
export interface MetricFamily {
  name: string;
  help: string;
  /** `counter`, `gauge` or `histogram`. */
  kind: string;
  /** `seconds` or '' (OpenTelemetry's `s` or `1`). */
  unit: string;
  series: MetricSeries[];
}

export interface MetricsSnapshot {
  families: MetricFamily[];
}

/** The family lib/ adds memo hits to, as `{provider, outcome="memo_hit"}` series. */
export const CREDENTIAL_REQUESTS = 'authpipe_credential_requests_total';

/**
 * `snapshot` with the memo hits counted in JS added to {@link CREDENTIAL_REQUESTS} (the native
 * engine counts the calls that reach it: native hits and store reads). The snapshot is not
 * changed; a family that is missing (an older addon) is added.
 */
export function withMemoHits(snapshot: MetricsSnapshot, tally: MemoHitTally): MetricsSnapshot {
  const hits = tally.series();
  if (hits.length === 0) return snapshot;
  const memoSeries = hits.map(([provider, count]): MetricSeries => ({
    labels: [
      { name: 'provider', value: provider },
      { name: 'outcome', value: 'memo_hit' },
    ],
    value: count,
  }));
  let found = false;
  const families = snapshot.families.map((family) => {
    if (family.name !== CREDENTIAL_REQUESTS) return family;
    found = true;
    return { ...family, series: [...family.series, ...memoSeries] };
  });
  if (!found) {
    families.push({ name: CREDENTIAL_REQUESTS, help: 'getCredential calls served, by provider and by where from.', kind: 'counter', unit: '', series: memoSeries });
  }
  return { families };
}
