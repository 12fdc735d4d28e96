/**
 * The engine's telemetry records (`handle.subscribeTelemetry`), typed by shape, and the one
 * place their JSON fields are read.
 * @internal
 */

/** One record: a stable event name, a level, one human sentence, and its fields as JSON. */
export interface TelemetryRecord {
  /** `debug`, `info`, `warn` or `error`. */
  level: string;
  event: string;
  message: string;
  /** ms since the epoch, on the engine's clock. */
  at: number;
  /** A JSON object of ids, codes, numbers and booleans; never a secret. */
  fieldsJson: string;
}

/** A record's fields as an object (`{}` if the JSON is not an object). */
export function recordFields(record: TelemetryRecord): Record<string, unknown> {
  try {
    const fields: unknown = JSON.parse(record.fieldsJson);
    return typeof fields === 'object' && fields !== null && !Array.isArray(fields) ? (fields as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}
