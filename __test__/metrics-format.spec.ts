// The Prometheus text exposition format (0.0.4) that metrics() serves, rendered from fixture
// snapshots shaped as the engine's, and read back by Prometheus' own parser (`promtool check
// metrics`, from Debian's prometheus package) where the machine has it.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { PROMETHEUS_CONTENT_TYPE } from '..';
import { memoHitTally, MemoHitTally } from '../lib/telemetry/memo-hits';
import { escapeLabelValue, formatNumber, renderPrometheus } from '../lib/telemetry/prometheus';
import { CREDENTIAL_REQUESTS, withMemoHits, type MetricsSnapshot } from '../lib/telemetry/snapshot';
import { fullSnapshot, histogramSeries } from './support/metrics-fixture';

const PROMTOOL = '/usr/bin/promtool';

/** `promtool check metrics` on `text`: its exit code and what it printed (lint problems, parse errors). */
function promtool(text: string): { status: number | null; output: string } {
  const run = spawnSync(PROMTOOL, ['check', 'metrics'], { input: text, encoding: 'utf8' });
  return { status: run.status, output: `${run.stdout}${run.stderr}`.trim() };
}

test('a counter, an empty gauge and a histogram, line by line', () => {
  const snapshot: MetricsSnapshot = {
    families: [
      { name: 'authpipe_refreshes_total', kind: 'counter', unit: '', help: 'Refresh attempts.', series: [{ labels: [{ name: 'provider', value: 'oidc' }, { name: 'outcome', value: 'ok' }], value: 3 }] },
      { name: 'authpipe_store_up', kind: 'gauge', unit: '', help: 'Whether the store answers.', series: [] },
      {
        name: 'authpipe_probe_duration_seconds',
        kind: 'histogram',
        unit: 'seconds',
        help: 'Probe round trip.',
        series: [{ labels: [{ name: 'provider', value: 'attio' }], value: 4, bounds: [0.1, 1], cumulative: [1, 3], sum: 2.5 }],
      },
    ],
  };
  expect(renderPrometheus(snapshot).split('\n')).toEqual([
    '# HELP authpipe_refreshes_total Refresh attempts.',
    '# TYPE authpipe_refreshes_total counter',
    'authpipe_refreshes_total{provider="oidc",outcome="ok"} 3',
    '# HELP authpipe_store_up Whether the store answers.',
    '# TYPE authpipe_store_up gauge',
    '# HELP authpipe_probe_duration_seconds Probe round trip.',
    '# TYPE authpipe_probe_duration_seconds histogram',
    'authpipe_probe_duration_seconds_bucket{provider="attio",le="0.1"} 1',
    'authpipe_probe_duration_seconds_bucket{provider="attio",le="1"} 3',
    'authpipe_probe_duration_seconds_bucket{provider="attio",le="+Inf"} 4',
    'authpipe_probe_duration_seconds_sum{provider="attio"} 2.5',
    'authpipe_probe_duration_seconds_count{provider="attio"} 4',
    '', // the text ends with a line feed
  ]);
  expect(renderPrometheus({ families: [] })).toBe('');
});

test('label values escape backslash, double quote and line feed; HELP escapes backslash and line feed', () => {
  expect(escapeLabelValue('a\\b"c\nd')).toBe('a\\\\b\\"c\\nd');
  expect(escapeLabelValue('plain é ü {}=,')).toBe('plain é ü {}=,');
  const text = renderPrometheus({
    families: [{ name: 'authpipe_connections', kind: 'gauge', unit: '', help: 'Two\nlines with a \\ and "quotes"', series: [{ labels: [{ name: 'provider', value: 'we\\ird"\nname' }], value: 1 }] }],
  });
  expect(text).toBe('# HELP authpipe_connections Two\\nlines with a \\\\ and "quotes"\n# TYPE authpipe_connections gauge\nauthpipe_connections{provider="we\\\\ird\\"\\nname"} 1\n');
  if (existsSync(PROMTOOL)) expect(promtool(text)).toEqual({ status: 0, output: '' });
});

test('numbers as Prometheus reads them: +Inf, -Inf, NaN, exponents, integers', () => {
  expect([Infinity, -Infinity, NaN, 0, -0, 3, 0.25, 1e-7, 1.5e21, 2 ** 53].map(formatNumber)).toEqual(['+Inf', '-Inf', 'NaN', '0', '0', '3', '0.25', '1e-7', '1.5e+21', '9007199254740992']);
  const text = renderPrometheus({
    families: [
      {
        name: 'authpipe_seconds_since_last_successful_refresh',
        kind: 'gauge',
        unit: 'seconds',
        help: 'Seconds since the last successful refresh.',
        series: [
          { labels: [{ name: 'provider', value: 'a' }], value: Infinity },
          { labels: [{ name: 'provider', value: 'b' }], value: NaN },
          { labels: [{ name: 'provider', value: 'c' }], value: 1e-7 },
        ],
      },
    ],
  });
  expect(text).toContain('{provider="a"} +Inf\n');
  expect(text).toContain('{provider="b"} NaN\n');
  if (existsSync(PROMTOOL)) expect(promtool(text)).toEqual({ status: 0, output: '' });
});

test("a histogram's buckets are cumulative and end with le=\"+Inf\" at the count; _sum and _count follow", () => {
  const series = histogramSeries({ provider: 'oidc', outcome: 'transient' }, [0.25, 0.5, 0.5, 7, 40], [0.01, 0.5, 10]);
  const lines = renderPrometheus({ families: [{ name: 'authpipe_refresh_duration_seconds', kind: 'histogram', unit: 'seconds', help: 'h', series: [series] }] }).trim().split('\n').slice(2);
  expect(lines).toEqual([
    'authpipe_refresh_duration_seconds_bucket{provider="oidc",outcome="transient",le="0.01"} 0',
    'authpipe_refresh_duration_seconds_bucket{provider="oidc",outcome="transient",le="0.5"} 3',
    'authpipe_refresh_duration_seconds_bucket{provider="oidc",outcome="transient",le="10"} 4',
    'authpipe_refresh_duration_seconds_bucket{provider="oidc",outcome="transient",le="+Inf"} 5',
    'authpipe_refresh_duration_seconds_sum{provider="oidc",outcome="transient"} 48.25',
    'authpipe_refresh_duration_seconds_count{provider="oidc",outcome="transient"} 5',
  ]);
  // A family of no known kind is exposed as untyped rather than mislabelled.
  expect(renderPrometheus({ families: [{ name: 'x', kind: 'summary', unit: '', help: 'h', series: [] }] })).toContain('# TYPE x untyped');
});

test('memo hits join authpipe_credential_requests_total as outcome="memo_hit", per provider, shared per engine', () => {
  const tally = new MemoHitTally();
  tally.counter('oidc').count += 5;
  tally.counter('attio').count++;
  tally.counter('oidc').count++; // the same counter object each time
  const snapshot = fullSnapshot();
  const before = JSON.stringify(snapshot);
  const merged = withMemoHits(snapshot, tally);
  expect(JSON.stringify(snapshot)).toBe(before); // the engine's snapshot is not changed
  const text = renderPrometheus(merged);
  expect(text).toContain('authpipe_credential_requests_total{provider="oidc",outcome="native_hit"} 7\n');
  expect(text).toContain('authpipe_credential_requests_total{provider="attio",outcome="memo_hit"} 1\n');
  expect(text).toContain('authpipe_credential_requests_total{provider="oidc",outcome="memo_hit"} 6\n');
  // No hits yet: the snapshot as it is. A snapshot without the family (an older addon) gets it.
  expect(withMemoHits(snapshot, new MemoHitTally())).toBe(snapshot);
  const added = withMemoHits({ families: [] }, tally);
  expect(added.families.map((f) => [f.name, f.kind, f.series.length])).toEqual([[CREDENTIAL_REQUESTS, 'counter', 2]]);
  // One tally per engine id: instances on one engine share it.
  expect(memoHitTally(900_001)).toBe(memoHitTally(900_001));
  expect(memoHitTally(900_001)).not.toBe(memoHitTally(900_002));
});

test('the content type to serve it with', () => {
  expect(PROMETHEUS_CONTENT_TYPE).toBe('text/plain; version=0.0.4; charset=utf-8');
});

(existsSync(PROMTOOL) ? test : test.skip)("Prometheus' own parser and linter accept every family of the contract, with memo hits", () => {
  const tally = new MemoHitTally();
  tally.counter('oidc').count = 12;
  const text = renderPrometheus(withMemoHits(fullSnapshot(), tally));
  expect(promtool(text)).toEqual({ status: 0, output: '' });
  // And it does read what it checks: a broken line is a parse error.
  expect(promtool(`${text}authpipe_store_up{provider="x} 1\n`).status).not.toBe(0);
});
