/**
 * Structured logs: the engine's telemetry records forwarded to the app's pino-compatible logger
 * as `logger[level]({ event, ...fields }, message)`. Records carry ids, codes and numbers, never
 * a secret (the core builds them so); nothing is logged without a logger.
 * @internal
 */
import * as args from '../args';
import { invalidArgument } from '../errors';
import type { AuthpipeLogger } from '../types';
import type { TelemetryRecord } from './records';

const LOG_METHODS = ['trace', 'debug', 'info', 'warn', 'error'] as const;
type LogLevel = (typeof LOG_METHODS)[number];
const LEVELS = new Set<string>(LOG_METHODS);

/**
 * The `logger` option checked: an object with the five methods (own or inherited, never read
 * from a polluted `Object.prototype`), or undefined when not given.
 * @throws {AuthpipeError} `INVALID_ARGUMENT` naming the methods that are missing.
 */
export function loggerOption(value: unknown): AuthpipeLogger | undefined {
  if (value === undefined || value === null) return undefined;
  const methods = args.fields(value, 'logger', LOG_METHODS, 'logger.');
  const missing = LOG_METHODS.filter((name) => typeof methods[name] !== 'function');
  if (missing.length > 0) {
    throw invalidArgument(`logger must have the methods ${LOG_METHODS.join(', ')} (a pino logger has them); it has no ${missing.join(', ')}`);
  }
  return value as AuthpipeLogger;
}

/** Logs one record at its level (an unknown level as info). */
export function logRecord(logger: AuthpipeLogger, record: TelemetryRecord, fields: Record<string, unknown>): void {
  const level: LogLevel = LEVELS.has(record.level) ? (record.level as LogLevel) : 'info';
  // The method is looked up at each call: pino replaces a disabled level's method with a no-op
  // when the app changes `logger.level`.
  logger[level]({ event: record.event, ...fields }, record.message);
}
