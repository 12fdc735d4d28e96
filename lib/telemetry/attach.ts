/**
 * Telemetry on an opened engine handle: the Prometheus text on demand, and, only when the app
 * passed a `logger` or a `meterProvider`, a subscription to the engine's telemetry records
 * (without one the engine sends nothing anywhere).
 * @internal
 */
import type { AuthpipeLogger, OpenTelemetryMeter } from '../types';
import { logRecord, loggerOption } from './logger';
import type { MemoHitTally } from './memo-hits';
import { meterOption, OpenTelemetryMetrics } from './otel';
import { renderPrometheus } from './prometheus';
import { recordFields, type TelemetryRecord } from './records';
import { withMemoHits, type MetricsSnapshot } from './snapshot';

/** What telemetry needs of the native handle. */
export interface TelemetryHandle {
  metrics(): MetricsSnapshot;
  subscribeTelemetry(listener: (record: TelemetryRecord) => void): void;
}

/** The checked `logger` and `meterProvider` options (the latter as this package's meter). */
export interface TelemetryOptions {
  readonly logger: AuthpipeLogger | undefined;
  readonly meter: OpenTelemetryMeter | undefined;
}

/** @throws {AuthpipeError} `INVALID_ARGUMENT` naming what the logger or meter provider lacks. */
export function telemetryOptions(opts: { logger?: unknown; meterProvider?: unknown }): TelemetryOptions {
  return { logger: loggerOption(opts.logger), meter: meterOption(opts.meterProvider) };
}

/** The engine's metrics and this engine's memo hits, as Prometheus text. */
export function prometheusText(handle: TelemetryHandle, tally: MemoHitTally): string {
  return renderPrometheus(withMemoHits(handle.metrics(), tally));
}

/** Starts what `options` ask for on `handle`; returns what stops it (after the handle closed). */
export function attachTelemetry(handle: TelemetryHandle, options: TelemetryOptions, tally: MemoHitTally): () => void {
  const { logger, meter } = options;
  if (logger === undefined && meter === undefined) return () => {};
  let otel: OpenTelemetryMetrics | undefined;
  try {
    otel = meter === undefined ? undefined : new OpenTelemetryMetrics(meter, () => withMemoHits(handle.metrics(), tally));
  } catch (err) {
    rethrowInApp(err); // the instance opens all the same, without the instruments
  }
  handle.subscribeTelemetry((record) => {
    const fields = recordFields(record);
    try {
      otel?.record(record, fields);
      if (logger !== undefined) logRecord(logger, record, fields);
    } catch (err) {
      rethrowInApp(err);
    }
  });
  return () => otel?.stop();
}

/** The app's logger or meter threw: its error surfaces in the app, never on the Rust thread or in open(). */
function rethrowInApp(err: unknown): void {
  process.nextTick(() => {
    throw err;
  });
}
