/**
 * Type checks at the JS boundary. The core validates what values mean (lengths, characters,
 * known providers); these checks make sure a value of the wrong JS type never reaches it, and
 * that each error names the field, never the value.
 * @internal
 */
import { AuthpipeError, invalidArgument } from './errors';

export function object(value: unknown, field: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || guarded(() => Array.isArray(value), field)) {
    throw invalidArgument(`${field} must be an object`);
  }
  return value as Record<string, unknown>;
}

/** Longest prototype chain read through: a Proxy's `getPrototypeOf` trap can make one endless. */
const MAX_PROTOTYPE_DEPTH = 64;

/**
 * The named fields of an argument object, each read once into a record of our own: own or
 * inherited, but never from `Object.prototype` (a polluted prototype must not supply a missing
 * tenantId or redirectUri). A getter or Proxy trap that throws becomes INVALID_ARGUMENT naming
 * the field; `prefix` locates the object inside a list (`[3].`).
 */
export function fields<K extends string>(value: unknown, field: string, names: readonly K[], prefix = ''): Record<K, unknown> {
  const obj = object(value, field);
  const out = Object.create(null) as Record<K, unknown>;
  for (const name of names) out[name] = guarded(() => inherited(obj, name), `${prefix}${name}`);
  return out;
}

function inherited(obj: object, name: string): unknown {
  let owner: object | null = obj;
  for (let depth = 0; owner !== null && owner !== Object.prototype; depth++, owner = Reflect.getPrototypeOf(owner)) {
    if (depth === MAX_PROTOTYPE_DEPTH) throw new RangeError('prototype chain too long');
    if (Object.hasOwn(owner, name)) return Reflect.get(owner, name, obj);
  }
  return undefined;
}

/** Longest list read: past it a (sparse, or Proxy) array's length is no list anyone meant. */
const MAX_LIST_LENGTH = 1_000_000;

/** A list argument copied into an array of our own, its elements read once. */
export function list(value: unknown, field: string, what = 'an array'): unknown[] {
  if (!guarded(() => Array.isArray(value), field)) throw invalidArgument(`${field} must be ${what}`);
  const length = guarded(() => (value as unknown[]).length, field);
  if (length > MAX_LIST_LENGTH) throw invalidArgument(`${field} has ${length} entries; the limit is ${MAX_LIST_LENGTH}`);
  return guarded(() => Array.from({ length }, (_, i) => (value as unknown[])[i]), field);
}

/** An object's own enumerable string-keyed entries, read once. */
export function entries(value: unknown, field: string): Array<[string, unknown]> {
  const obj = object(value, field);
  return guarded(() => Object.entries(obj), field);
}

/**
 * Runs a read of caller data: what a getter, a `toString` or a Proxy trap throws there becomes
 * INVALID_ARGUMENT naming the field (the caller's error kept as `cause`), never a raw error.
 */
export function guarded<T>(read: () => T, field: string): T {
  try {
    return read();
  } catch (cause) {
    if (cause instanceof AuthpipeError) throw cause;
    throw new AuthpipeError('INVALID_ARGUMENT', `${field} could not be read: reading it threw (a getter or a Proxy trap)`, { cause });
  }
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
  return list(value, field, 'an array of strings').map((item, i) => string(item, `${field}[${i}]`));
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
  const ms = guarded(() => (value instanceof Date ? value.getTime() : value), field);
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
  const bytes = guarded(() => (value instanceof Uint8Array ? Buffer.from(value.buffer, value.byteOffset, value.byteLength) : undefined), field);
  if (bytes !== undefined) return bytes.toString('base64');
  if (typeof value === 'string') return value;
  throw invalidArgument(`${field} must be a base64 or hex string, or a Uint8Array of 32 bytes`);
}

/**
 * URL or form parameters as a record, refusing a name given twice: which copy counts would
 * otherwise depend on the parser (one reads the first `state`, another the last).
 */
export function uniqueParams(params: URLSearchParams, what: string): Record<string, string> {
  const record: Record<string, string> = {};
  for (const [name, value] of guarded(() => [...params], what)) {
    if (Object.hasOwn(record, name)) throw invalidArgument(`${what}: the parameter '${name}' is given more than once`);
    record[name] = value;
  }
  return record;
}
