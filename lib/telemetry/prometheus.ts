/**
 * The Prometheus text exposition format, version 0.0.4: what a Prometheus server scrapes from
 * an app's `/metrics` (and what prom-client's registry serves), rendered from a metrics
 * snapshot. https://prometheus.io/docs/instrumenting/exposition_formats/
 * @internal
 */
import type { MetricFamily, MetricLabel, MetricSeries, MetricsSnapshot } from './snapshot';


const KINDS = new Set(['counter', 'gauge', 'histogram']);

/** The snapshot as exposition text: per family its HELP and TYPE lines, then its samples. */
export function renderPrometheus(snapshot: MetricsSnapshot): string {
  const lines: string[] = [];
  for (const family of snapshot.families) renderFamily(family, lines);
  return lines.length === 0 ? '' : `${lines.join('\n')}\n`;
}

function renderFamily(family: MetricFamily, lines: string[]): void {
  const kind = KINDS.has(family.kind) ? family.kind : 'untyped';
  lines.push(`# HELP ${family.name} ${escapeHelp(family.help)}`, `# TYPE ${family.name} ${kind}`);
  for (const series of family.series) {
    if (kind === 'histogram') renderHistogram(family.name, series, lines);
    else lines.push(sample(family.name, series.labels, series.value));
  }
}

/** `_bucket` per bound with the cumulative count (and `le="+Inf"`, the count), `_sum`, `_count`. */
function renderHistogram(name: string, series: MetricSeries, lines: string[]): void {
  const bounds = series.bounds ?? [];
  const cumulative = series.cumulative ?? [];
  bounds.forEach((bound, i) => {
    lines.push(sample(`${name}_bucket`, [...series.labels, { name: 'le', value: formatNumber(bound) }], cumulative[i] ?? 0));
  });
  lines.push(
    sample(`${name}_bucket`, [...series.labels, { name: 'le', value: '+Inf' }], series.value),
    sample(`${name}_sum`, series.labels, series.sum ?? 0),
    sample(`${name}_count`, series.labels, series.value),
  );
}

function sample(name: string, labels: readonly MetricLabel[], value: number): string {
  const rendered = labels.length === 0 ? '' : `{${labels.map((l) => `${l.name}="${escapeLabelValue(l.value)}"`).join(',')}}`;
  return `${name}${rendered} ${formatNumber(value)}`;
}

/** A sample value as Prometheus (Go's ParseFloat) reads it: `+Inf`, `-Inf`, `NaN`, or decimal. */
export function formatNumber(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value); // "1e-7" and "1e+21" are valid Go floats too
}

/** In a label value, backslash, double quote and line feed are escaped. */
export function escapeLabelValue(value: string): string {
  return value.replace(/[\\"\n]/g, (c) => (c === '\n' ? '\\n' : `\\${c}`));
}

/** In HELP text, backslash and line feed are escaped (a quote is not). */
function escapeHelp(help: string): string {
  return help.replace(/[\\\n]/g, (c) => (c === '\n' ? '\\n' : '\\\\'));
}
