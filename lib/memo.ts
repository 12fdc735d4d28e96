/**
 * The warm path of `getCredential`: credentials this instance already handed out, kept until
 * the connection changes. Validity is checked against the connection's generation counter,
 * which Rust bumps on every change (new token, revoked, deleted) and which JS reads straight
 * from shared memory, so a hit is three Map lookups and one typed-array read, with no call
 * into Rust and no clock read: Rust's scheduler also bumps the counter at a token's stale
 * point (`Engine::cache_put`), and Rust checks expiry against the clock whenever it serves.
 * A hit also bumps its provider's memo-hit counter (the metrics' `memo_hit`), held by the entry.
 * @internal
 */
import type { Credential } from './types';
import { native, type NativeAuthpipe } from './native';
import type { HitCounter, MemoHitTally } from './telemetry/memo-hits';

interface Entry {
  /** Resolved once and handed out on every hit: awaiting it allocates nothing. */
  readonly promise: Promise<Credential>;
  readonly counters: Uint32Array;
  readonly index: number;
  readonly generation: number;
  /** The provider's memo-hit counter, shared by the instances on this engine. */
  readonly hits: HitCounter;
}

const SLOTS_PER_PAGE = native.GENERATION_PAGE_SLOTS;

export class CredentialMemo {
  readonly #native: NativeAuthpipe;
  readonly #limit: number;
  readonly #hits: MemoHitTally;
  readonly #pages: Uint32Array[] = [];
  /** provider -> tenantId -> userId -> entry. Nested maps avoid building a key string per call. */
  #entries = new Map<string, Map<string, Map<string, Entry>>>();
  #size = 0;

  constructor(nativeHandle: NativeAuthpipe, limit: number, hits: MemoHitTally) {
    this.#native = nativeHandle;
    this.#limit = limit;
    this.#hits = hits;
  }

  get(provider: string, tenantId: string, userId: string): Promise<Credential> | undefined {
    const entry = this.#entries.get(provider)?.get(tenantId)?.get(userId);
    if (entry === undefined || entry.counters[entry.index] !== entry.generation) return undefined;
    entry.hits.count++;
    return entry.promise;
  }

  set(provider: string, tenantId: string, userId: string, value: Credential, slot: number, generation: number): void {
    const counters = this.#page(Math.floor(slot / SLOTS_PER_PAGE));
    if (counters === undefined) return;
    if (this.#size >= this.#limit) this.clear();
    let byTenant = this.#entries.get(provider);
    if (byTenant === undefined) this.#entries.set(provider, (byTenant = new Map()));
    let byUser = byTenant.get(tenantId);
    if (byUser === undefined) byTenant.set(tenantId, (byUser = new Map()));
    if (!byUser.has(userId)) this.#size++;
    byUser.set(userId, { promise: Promise.resolve(value), counters, index: slot % SLOTS_PER_PAGE, generation, hits: this.#hits.counter(provider) });
  }

  delete(provider: string, tenantId: string, userId: string): void {
    if (this.#entries.get(provider)?.get(tenantId)?.delete(userId)) this.#size--;
  }

  clear(): void {
    this.#entries = new Map();
    this.#size = 0;
  }

  #page(index: number): Uint32Array | undefined {
    let page = this.#pages[index];
    if (page === undefined) {
      const buffer = this.#native.generationPage(index);
      if (buffer === null) return undefined;
      page = this.#pages[index] = new Uint32Array(buffer);
    }
    return page;
  }
}
