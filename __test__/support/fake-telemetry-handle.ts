// A stand-in for the native handle's telemetry side (metrics() and subscribeTelemetry()), for
// testing lib/telemetry without the engine: snapshots from the fixture, records sent by hand.
import type { TelemetryHandle } from '../../lib/telemetry/attach';
import type { TelemetryRecord } from '../../lib/telemetry/records';
import type { MetricsSnapshot } from '../../lib/telemetry/snapshot';
import { fullSnapshot } from './metrics-fixture';

export class FakeTelemetryHandle implements TelemetryHandle {
  snapshot: MetricsSnapshot = fullSnapshot();
  readonly listeners: Array<(record: TelemetryRecord) => void> = [];
  snapshots = 0;

  metrics(): MetricsSnapshot {
    this.snapshots++;
    return this.snapshot;
  }

  subscribeTelemetry(listener: (record: TelemetryRecord) => void): void {
    this.listeners.push(listener);
  }

  /** Sends a record to every listener, as the engine's thread would. */
  send(level: string, event: string, fields: Record<string, unknown>, message = `${event} happened`): void {
    for (const listener of this.listeners) listener({ level, event, message, at: Date.now(), fieldsJson: JSON.stringify(fields) });
  }
}
