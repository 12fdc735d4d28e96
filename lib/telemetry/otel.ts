/**
 * The same metrics as instruments on an OpenTelemetry `MeterProvider` the app passes in
 * (`meterProvider`). Typed by shape (see the `OpenTelemetry*` types): @opentelemetry/api is an
 * optional peer dependency, never loaded here. Counters and gauges are observable, read from
 * one engine snapshot per collection in a single batch callback; the duration histograms are
 * recorded from the engine's refresh and probe records, as they happen (an observable
 * histogram does not exist in OpenTelemetry). The change-feed lag histogram has no record to
 * feed it and is left to the Prometheus text (`metrics()`).
 * @internal
 */
import * as args from '../args';
import { invalidArgument } from '../errors';
import type { OpenTelemetryAttributes, OpenTelemetryBatchObservableResult, OpenTelemetryHistogram, OpenTelemetryMeter, OpenTelemetryObservable } from '../types';
import type { TelemetryRecord } from './records';
import type { MetricFamily, MetricLabel, MetricsSnapshot } from './snapshot';

/** The meter's name (instrumentation scope). */
export const METER_NAME = '@authpipe/node';

const METER_METHODS = ['createHistogram', 'createObservableCounter', 'createObservableGauge', 'addBatchObservableCallback', 'removeBatchObservableCallback'] as const;

/** The histogram each duration-carrying record feeds. */
const HISTOGRAM_OF_EVENT: Readonly<Record<string, string>> = {
  'refresh.succeeded': 'authpipe_refresh_duration_seconds',
  'refresh.failed': 'authpipe_refresh_duration_seconds',
  'probe.succeeded': 'authpipe_probe_duration_seconds',
  'probe.failed': 'authpipe_probe_duration_seconds',
};

/**
 * Bucket bounds (seconds) advised to the SDK for the duration histograms: the core's
 * `REQUEST_BOUNDS` (telemetry/metrics.rs), so that both paths bucket alike (metrics-otel.spec.ts
 * compares them). The SDK's own default bounds are made for milliseconds.
 */
export const DURATION_BOUNDS_SECONDS: readonly number[] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/**
 * The `meterProvider` option checked, and this package's meter got from it; undefined when
 * not given.
 * @throws {AuthpipeError} `INVALID_ARGUMENT` when it has no `getMeter`, or its meter lacks a
 *   method used here.
 */
export function meterOption(value: unknown): OpenTelemetryMeter | undefined {
  if (value === undefined || value === null) return undefined;
  const { getMeter } = args.fields(value, 'meterProvider', ['getMeter'], 'meterProvider.');
  if (typeof getMeter !== 'function') throw invalidArgument('meterProvider must be an OpenTelemetry MeterProvider: it has no getMeter method');
  let meter: unknown;
  try {
    meter = (getMeter as (name: string) => unknown).call(value, METER_NAME);
  } catch (cause) {
    throw Object.assign(invalidArgument('meterProvider.getMeter() threw'), { cause });
  }
  if (typeof meter !== 'object' || meter === null) throw invalidArgument('meterProvider.getMeter() did not return a Meter');
  const methods = args.fields(meter, 'meterProvider.getMeter()', METER_METHODS, 'meterProvider.getMeter().');
  const missing = METER_METHODS.filter((name) => typeof methods[name] !== 'function');
  if (missing.length > 0) throw invalidArgument(`meterProvider.getMeter() returned a Meter without ${missing.join(', ')}`);
  return meter as OpenTelemetryMeter;
}

/** The instruments of one instance on its meter, from the engine's first snapshot to `stop()`. */
export class OpenTelemetryMetrics {
  readonly #meter: OpenTelemetryMeter;
  readonly #histograms = new Map<string, OpenTelemetryHistogram>();
  readonly #observables = new Map<string, OpenTelemetryObservable>();
  readonly #callback: (result: OpenTelemetryBatchObservableResult) => void;

  /** `read` takes a snapshot (at each collection); the families of the first one are the instruments. */
  constructor(meter: OpenTelemetryMeter, read: () => MetricsSnapshot) {
    this.#meter = meter;
    const families = new Map(read().families.map((f) => [f.name, f]));
    for (const name of new Set(Object.values(HISTOGRAM_OF_EVENT))) {
      const help = families.get(name)?.help ?? name;
      this.#histograms.set(name, meter.createHistogram(name, { description: help, unit: 's', advice: { explicitBucketBoundaries: [...DURATION_BOUNDS_SECONDS] } }));
    }
    for (const family of families.values()) {
      if (family.kind !== 'counter' && family.kind !== 'gauge') continue;
      const options = instrumentOptions(family);
      this.#observables.set(family.name, family.kind === 'counter' ? meter.createObservableCounter(family.name, options) : meter.createObservableGauge(family.name, options));
    }
    this.#callback = (result) => {
      for (const family of read().families) {
        const observable = this.#observables.get(family.name);
        if (observable === undefined) continue;
        for (const series of family.series) result.observe(observable, series.value, attributes(series.labels));
      }
    };
    meter.addBatchObservableCallback(this.#callback, [...this.#observables.values()]);
  }

  /** Records a refresh's or a probe's round trip, from its record. */
  record(record: TelemetryRecord, fields: Record<string, unknown>): void {
    const name = HISTOGRAM_OF_EVENT[record.event];
    if (name === undefined || typeof fields.durationMs !== 'number') return;
    const outcome = record.event.endsWith('.succeeded') ? 'ok' : String(fields.outcome ?? 'unknown');
    this.#histograms.get(name)!.record(fields.durationMs / 1000, { provider: String(fields.provider ?? ''), outcome });
  }

  /** Stops observing (the instruments stay on the meter, as OpenTelemetry has no way to remove one). */
  stop(): void {
    this.#meter.removeBatchObservableCallback(this.#callback, [...this.#observables.values()]);
  }
}

function instrumentOptions(family: MetricFamily): { description: string; unit?: string } {
  // Unitless families get no unit: '1' would make OpenTelemetry's Prometheus exporters add `_ratio` to a gauge's name.
  return family.unit === 'seconds' ? { description: family.help, unit: 's' } : { description: family.help };
}

function attributes(labels: readonly MetricLabel[]): OpenTelemetryAttributes {
  const out: OpenTelemetryAttributes = {};
  for (const label of labels) out[label.name] = label.value;
  return out;
}
