/**
 * Type checks at the JS boundary. The core validates what values mean (lengths, characters,
 * known providers); these checks make sure a value of the wrong JS type never reaches it, and
 * that each error names the field, never the value.
 * @internal
 */
import { invalidArgument } from './errors';

export function object(value: unknown, field: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw invalidArgument(`${field} must be an object`);
  }
  return value as Record<string, unknown>;
}

export function string(value: unknown, field: string): string {
  if (typeof value !== 'string') throw invalidArgument(`${field} must be a string`);
  // An unpaired surrogate would become U+FFFD on its way to UTF-8, and two different ids would
  // collide; refuse it instead.
  if (!value.isWellFormed()) throw invalidArgument(`${field} is not well-formed Unicode (it has an unpaired surrogate)`);
  return value;
}

export function optionalString(value: unknown, field: string): string | undefined {
  return value === undefined || value === null ? undefined : string(value, field);
}

export function optionalStrings(value: unknown, field: string): string[] | undefined {
  if (value === undefined || value === null) return undefined;
  if (!Array.isArray(value)) throw invalidArgument(`${field} must be an array of strings`);
  return value.map((item, i) => string(item, `${field}[${i}]`));
}

export function optionalBoolean(value: unknown, field: string): boolean | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'boolean') throw invalidArgument(`${field} must be a boolean`);
  return value;
}

export function optionalInteger(value: unknown, field: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value)) throw invalidArgument(`${field} must be an integer`);
  return value;
}

/** A Date or a number of milliseconds since the epoch. */
export function optionalTimestamp(value: unknown, field: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  const ms = value instanceof Date ? value.getTime() : value;
  if (typeof ms !== 'number' || !Number.isFinite(ms)) {
    throw invalidArgument(`${field} must be a valid Date or a number of milliseconds since the epoch`);
  }
  return ms;
}

/** A plain object serialized as JSON. */
export function optionalJsonObject(value: unknown, field: string): string | undefined {
  if (value === undefined || value === null) return undefined;
  object(value, field);
  try {
    return JSON.stringify(value);
  } catch {
    throw invalidArgument(`${field} must be JSON-serializable (no cycles, no BigInt)`);
  }
}

/** Key material: a string (base64 or hex) or the raw 32 bytes. */
export function keyMaterial(value: unknown, field: string): string {
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64');
  if (typeof value === 'string') return value;
  throw invalidArgument(`${field} must be a base64 or hex string, or a Uint8Array of 32 bytes`);
}

/**
 * URL or form parameters as a record, refusing a name given twice: which copy counts would
 * otherwise depend on the parser (one reads the first `state`, another the last).
 */
export function uniqueParams(params: URLSearchParams, what: string): Record<string, string> {
  const record: Record<string, string> = {};
  for (const [name, value] of params) {
    if (Object.hasOwn(record, name)) throw invalidArgument(`${what}: the parameter '${name}' is given more than once`);
    record[name] = value;
  }
  return record;
}
