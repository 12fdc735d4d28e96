/**
 * The hostile values the generated table substitutes into every argument and field. Each says
 * how it lands in its parent (a value, a throwing getter, an absent field with a polluted or a
 * custom prototype) and what counts as a correct answer there (the `Oracle`).
 */

/** What a case must do. */
export type Oracle =
  /** Reject with an AuthpipeError of one of the call's codes. */
  | 'reject'
  /** Resolve, or reject with an AuthpipeError of one of the call's codes. */
  | 'either'
  /** Answer as the valid arguments do (the same success, or the same error code). */
  | 'as-valid'
  /** Answer as the arguments with this field left out do. */
  | 'as-absent';

/** `bytes`: a string or bytes (a raw request body); `key`: the same, read as key material. */
export type NodeType = 'id' | 'string' | 'integer' | 'boolean' | 'timestamp' | 'json' | 'key' | 'bytes' | 'function' | 'object' | 'array';

/** One argument or field of a public call: its type, whether it may be left out, a valid value. */
export interface Node {
  type: NodeType;
  optional?: boolean;
  /** A valid value (absent from the valid arguments when undefined). */
  valid?: unknown;
  /** `object`: its fields. */
  fields?: Record<string, Node>;
  /** `array`: its elements' node. */
  element?: Node;
  /** Optional, but `null` is refused rather than read as "left out" (a key given as null is a mistake). */
  nullRefused?: boolean;
  /** An entry of a record (callback parameters, providers): there even when null or undefined. */
  entry?: boolean;
}

/** How a hostile value is placed into its parent object. */
export type Placement =
  | { value: unknown }
  | { getter: () => unknown }
  | { absent: true; prototypeValue?: unknown }
  | { absent: true; pollute: unknown };

export interface Hostile {
  name: string;
  family: 'wrong type' | 'throwing' | 'prototype' | 'proxy' | 'huge' | 'odd string' | 'odd number';
  /** Only where the node sits in an object (getters, prototypes). */
  fieldOnly?: boolean;
  /** Only for these node types. */
  only?: readonly NodeType[];
  place(node: Node, valid: unknown): Placement;
  /** `inObject`: the node is a field (else an argument or an array element). */
  oracle(node: Node, inObject: boolean): Oracle;
}

const boom = (what: string) => () => {
  throw new Error(`hostile ${what}`);
};

/** Strings are the right JS type for these; whether the value is fine is the core's to say. */
const STRINGY: readonly NodeType[] = ['id', 'string', 'key', 'bytes'];
const OBJECTY: readonly NodeType[] = ['object', 'json'];

/** A value of the wrong JS type for `node`: refused, except where a wider type is accepted. */
function wrongType(name: string, make: () => unknown, acceptedBy: readonly NodeType[] = []): Hostile {
  return {
    name,
    family: 'wrong type',
    place: () => ({ value: make() }),
    oracle: (node) => {
      if (acceptedBy.includes(node.type)) return node.type === 'object' && hasRequired(node) ? 'reject' : 'either';
      return 'reject';
    },
  };
}

export function hasRequired(node: Node): boolean {
  return Object.values(node.fields ?? {}).some((f) => !f.optional);
}

/**
 * `null`/`undefined` mean "left out" for an optional field; an optional argument may take
 * either as its default or refuse `null`; anything required refuses both.
 */
function nullish(name: string, value: null | undefined): Hostile {
  return {
    name,
    family: 'wrong type',
    place: () => ({ value }),
    oracle: (node, inObject) => {
      if (!node.optional || node.entry || (value === null && node.nullRefused)) return 'reject';
      return inObject ? 'as-absent' : 'either';
    },
  };
}

/** A string of the right JS type but a hostile shape: refused for ids, the core decides elsewhere. */
function oddString(name: string, make: (valid: unknown) => string, family: Hostile['family'] = 'odd string'): Hostile {
  return {
    name,
    family,
    place: (_node, valid) => ({ value: make(valid) }),
    oracle: (node) => (node.type === 'id' ? 'reject' : STRINGY.includes(node.type) ? 'either' : 'reject'),
  };
}

function oddNumber(name: string, value: number): Hostile {
  return {
    name,
    family: 'odd number',
    place: () => ({ value }),
    oracle: (node) => (node.type === 'integer' || node.type === 'timestamp' ? 'either' : 'reject'),
  };
}

/** An object whose conversion to a primitive (or to JSON) throws. */
function throwingConversion(name: string, key: PropertyKey): Hostile {
  return {
    name,
    family: 'throwing',
    place: () => ({ value: { [key]: boom(name) } }),
    // JSON.stringify calls toJSON only; an object of no required fields is an empty one.
    oracle: (node) => ((node.type === 'object' && !hasRequired(node)) || (node.type === 'json' && key !== 'toJSON') ? 'either' : 'reject'),
  };
}

/** A Proxy over a copy of the valid value whose `trap` throws. */
function throwingTrap(trap: keyof ProxyHandler<object>): Hostile {
  return {
    name: `Proxy whose ${trap} trap throws`,
    family: 'proxy',
    only: [...OBJECTY, 'array'],
    place: (_node, valid) => ({ value: new Proxy(copy(valid), { [trap]: boom(`${trap} trap`) }) }),
    oracle: () => 'either',
  };
}

function copy(valid: unknown): object {
  if (Array.isArray(valid)) return [...valid];
  return typeof valid === 'object' && valid !== null ? { ...valid } : {};
}

const TEN_MB = 10 * 1024 * 1024;
const LIST = 100_000;

export const HOSTILE_VALUES: readonly Hostile[] = [
  // Wrong JS types.
  wrongType('number 42', () => 42, ['integer', 'timestamp']),
  wrongType('bigint 1n', () => 1n),
  wrongType('symbol', () => Symbol('hostile')),
  wrongType('boolean true', () => true, ['boolean']),
  nullish('null', null),
  nullish('undefined', undefined),
  wrongType('empty array', () => [], ['array']),
  wrongType('function', () => () => 'hostile', ['function']),
  wrongType('Date', () => new Date(0), [...OBJECTY, 'timestamp']),
  wrongType('Map', () => new Map([['tenantId', 'org_acme']]), OBJECTY),
  wrongType('Buffer', () => Buffer.from('hostile'), [...OBJECTY, 'key', 'bytes']),
  wrongType('String object', () => new String('org_acme'), OBJECTY),
  oddNumber('NaN', NaN),
  oddNumber('Infinity', Infinity),
  oddNumber('-Infinity', -Infinity),
  oddNumber('-0', -0),
  oddNumber('-1', -1),
  oddNumber('1.5', 1.5),
  oddNumber('2^53 + 2', 2 ** 53 + 2),
  oddNumber('1e300', 1e300),
  // Getters and conversions that throw.
  {
    name: 'getter that throws',
    family: 'throwing',
    fieldOnly: true,
    place: () => ({ getter: boom('getter') }),
    oracle: () => 'reject',
  },
  throwingConversion('throwing toString', 'toString'),
  throwingConversion('throwing valueOf', 'valueOf'),
  throwingConversion('throwing Symbol.toPrimitive', Symbol.toPrimitive),
  throwingConversion('throwing toJSON', 'toJSON'),
  // Prototypes.
  {
    name: 'absent, with Object.prototype carrying the valid value',
    family: 'prototype',
    fieldOnly: true,
    place: (_node, valid) => ({ absent: true, pollute: valid }),
    oracle: () => 'as-absent',
  },
  {
    name: "absent, with the object's own prototype carrying the valid value",
    family: 'prototype',
    fieldOnly: true,
    place: (_node, valid) => ({ absent: true, prototypeValue: valid }),
    oracle: () => 'as-valid',
  },
  {
    name: 'Object.create(null) copy of the valid value',
    family: 'prototype',
    only: OBJECTY,
    place: (_node, valid) => ({ value: Object.assign(Object.create(null) as object, valid) }),
    oracle: () => 'as-valid',
  },
  // Proxies.
  throwingTrap('get'),
  throwingTrap('has'),
  throwingTrap('ownKeys'),
  throwingTrap('getOwnPropertyDescriptor'),
  throwingTrap('getPrototypeOf'),
  {
    name: 'revoked Proxy',
    family: 'proxy',
    place: (_node, valid) => {
      const { proxy, revoke } = Proxy.revocable(copy(valid), {});
      revoke();
      return { value: proxy };
    },
    oracle: () => 'reject',
  },
  {
    name: 'Proxy that says it has no fields but answers get',
    family: 'proxy',
    only: [...OBJECTY, 'array'],
    place: (_node, valid) => ({
      value: new Proxy(copy(valid), { getOwnPropertyDescriptor: () => undefined, ownKeys: () => [], has: () => false }),
    }),
    oracle: () => 'either',
  },
  {
    name: 'Proxy whose get answers 42 for everything',
    family: 'proxy',
    only: [...OBJECTY, 'array'],
    place: (_node, valid) => ({ value: new Proxy(copy(valid), { get: () => 42 }) }),
    oracle: () => 'either',
  },
  {
    name: 'Proxy with an endless prototype chain',
    family: 'proxy',
    only: OBJECTY,
    place: () => {
      const endless: object = new Proxy({}, { getPrototypeOf: () => endless });
      return { value: endless };
    },
    oracle: (node) => (hasRequired(node) ? 'reject' : 'either'),
  },
  // Huge.
  oddString('10 MB string', () => 'x'.repeat(TEN_MB), 'huge'),
  oddString('100,000-character id', () => 'a'.repeat(100_000), 'huge'),
  oddString('257-byte id (one past the limit)', () => 'a'.repeat(257), 'huge'),
  {
    name: '100,000-element array of the valid element',
    family: 'huge',
    place: (node, valid) => ({ value: new Array(LIST).fill(node.type === 'array' && Array.isArray(valid) ? valid[0] : 'x') }),
    oracle: (node) => (node.type === 'array' ? 'either' : 'reject'),
  },
  {
    name: '100,000 valid elements and a NUL string last',
    family: 'huge',
    only: ['array'],
    place: (_node, valid) => ({ value: [...new Array(LIST).fill((valid as unknown[] | undefined)?.[0] ?? 'x'), 'a\u0000b'] }),
    // A NUL is never in an id; other strings (a sandbox's scopes) are the callee's to judge.
    oracle: (node) => (node.element?.type === 'string' ? 'either' : 'reject'),
  },
  {
    name: 'sparse array of length 2^32 - 1',
    family: 'huge',
    only: ['array'],
    place: () => ({ value: new Array(2 ** 32 - 1) }),
    oracle: () => 'reject',
  },
  // Odd strings.
  oddString('empty string', () => ''),
  oddString('NUL inside ("a\\u0000b")', () => 'a\u0000b'),
  oddString('the valid value with a NUL appended', (valid) => `${typeof valid === 'string' ? valid : 'x'}\u0000`),
  oddString('lone surrogate', () => 'a\uD800b'),
  oddString('newline', () => 'a\nb'),
  // Printable, so a valid id as far as the core is concerned: only its answer is checked.
  { name: 'only spaces', family: 'odd string', place: () => ({ value: '   ' }), oracle: (node) => (STRINGY.includes(node.type) ? 'either' : 'reject') },
];
