// Planted values, the spellings a leak of one could take, and a scan of bytes for all of them
// at once (secret-scan.spec.ts).

/** A value planted by the scenarios (secret-scan-child.js). */
export interface Planted {
  kind: string;
  value: string;
  /** Its random part (fragments of it are looked for too); '' for master keys. */
  core: string;
  /** A master key: `value` is the base64 of its bytes, which are looked for in every spelling. */
  bytes?: boolean;
}

/** A value the library made that may appear only in the outputs that name its kind. */
export interface Generated {
  kind: string;
  value: string;
}

/** One sequence of bytes the scan looks for, and what it stands for. */
export interface Needle {
  kind: string;
  /** Which value (its index among the values) and in which spelling, for the report. */
  what: string;
  /** Whether outputs may carry it when they allow `kind` (generated values), or never (planted). */
  planted: boolean;
  bytes: Buffer;
}

/** Where a needle was found. */
export interface Hit {
  where: string;
  what: string;
  offset: number;
}

/** Length of the fragments of a planted value's random part that are looked for on their own. */
export const FRAGMENT = 8;

/** The spellings of a string looked for: as is, and as each encoding a leak could pass it through. */
export const STRING_SPELLINGS: Record<string, (v: string) => Buffer> = {
  raw: (v) => Buffer.from(v, 'utf8'),
  'percent-encoded': (v) => Buffer.from(encodeURIComponent(v)),
  'form-encoded': (v) => Buffer.from(new URLSearchParams({ v }).toString().slice(2)),
  base64: (v) => Buffer.from(Buffer.from(v, 'utf8').toString('base64').replace(/=+$/, '')),
  base64url: (v) => Buffer.from(Buffer.from(v, 'utf8').toString('base64url')),
  hex: (v) => Buffer.from(Buffer.from(v, 'utf8').toString('hex')),
  HEX: (v) => Buffer.from(Buffer.from(v, 'utf8').toString('hex').toUpperCase()),
  'JSON-escaped': (v) => Buffer.from(JSON.stringify(v).slice(1, -1)),
  'JSON-escaped, ASCII only': (v) => Buffer.from(JSON.stringify(v).slice(1, -1).replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)),
  latin1: (v) => Buffer.from(v, 'latin1'),
  'UTF-16LE': (v) => Buffer.from(v, 'utf16le'),
};

/** The spellings of key bytes looked for. */
export const BYTE_SPELLINGS: Record<string, (b: Buffer) => Buffer> = {
  'raw bytes': (b) => b,
  base64: (b) => Buffer.from(b.toString('base64').replace(/=+$/, '')),
  base64url: (b) => Buffer.from(b.toString('base64url')),
  hex: (b) => Buffer.from(b.toString('hex')),
  HEX: (b) => Buffer.from(b.toString('hex').toUpperCase()),
};

/**
 * Every needle: each planted value in every spelling, every {@link FRAGMENT}-character piece
 * of its random part (a leak cut short), master keys' bytes in every spelling and every
 * 8-byte piece of them; each generated value in every spelling. A spelling equal to another of
 * the same value is looked for once.
 */
export function needlesFor(planted: readonly Planted[], generated: readonly Generated[]): Needle[] {
  const needles: Needle[] = [];
  const seen = new Set<string>();
  const add = (kind: string, what: string, isPlanted: boolean, bytes: Buffer) => {
    const key = `${isPlanted}:${bytes.toString('hex')}`;
    if (bytes.length < FRAGMENT || seen.has(key)) return;
    seen.add(key);
    needles.push({ kind, what, planted: isPlanted, bytes });
  };
  planted.forEach((p, i) => {
    const name = `${p.kind} #${i}`;
    if (p.bytes) {
      const key = Buffer.from(p.value, 'base64');
      for (const [spelling, encode] of Object.entries(BYTE_SPELLINGS)) add(p.kind, `${name} as ${spelling}`, true, encode(key));
      for (let at = 0; at + FRAGMENT <= key.length; at++) add(p.kind, `${name}, bytes ${at}-${at + FRAGMENT}`, true, key.subarray(at, at + FRAGMENT));
    }
    for (const [spelling, encode] of Object.entries(STRING_SPELLINGS)) add(p.kind, `${name} ${p.bytes ? 'base64 text ' : ''}as ${spelling}`, true, encode(p.value));
    for (let at = 0; at + FRAGMENT <= p.core.length; at++) add(p.kind, `${name}, characters ${at}-${at + FRAGMENT} of its random part`, true, Buffer.from(p.core.slice(at, at + FRAGMENT)));
  });
  generated.forEach((g, i) => {
    for (const [spelling, encode] of Object.entries(STRING_SPELLINGS)) add(g.kind, `generated ${g.kind} #${i} as ${spelling}`, false, encode(g.value));
  });
  return needles;
}

/** Finds needles in haystacks in one pass each: candidates by their first 4 bytes, then compared. */
export class Scanner {
  readonly #byPrefix = new Map<number, Needle[]>();

  constructor(readonly needles: readonly Needle[]) {
    for (const n of needles) {
      const prefix = n.bytes.readUInt32LE(0);
      const list = this.#byPrefix.get(prefix);
      if (list) list.push(n);
      else this.#byPrefix.set(prefix, [n]);
    }
  }

  /** Every needle in `haystack` that `allows` does not excuse (planted needles never are). */
  scan(where: string, haystack: Buffer, allows: readonly string[] = []): Hit[] {
    const hits: Hit[] = [];
    for (let i = 0; i + 4 <= haystack.length; i++) {
      const candidates = this.#byPrefix.get(haystack.readUInt32LE(i));
      if (!candidates) continue;
      for (const n of candidates) {
        if (!n.planted && allows.includes(n.kind)) continue;
        if (i + n.bytes.length <= haystack.length && haystack.compare(n.bytes, 0, n.bytes.length, i, i + n.bytes.length) === 0) {
          hits.push({ where, what: n.what, offset: i });
        }
      }
    }
    return hits;
  }
}
