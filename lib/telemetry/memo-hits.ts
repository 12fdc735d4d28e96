/**
 * Memo hits, counted in JS: a warm `getCredential` never reaches Rust, so the engine cannot
 * count it. One counter object per provider per engine, shared by the instances on that engine
 * (in this JS realm; a worker thread on the same engine counts its own), and held by every memo
 * entry of that provider, so that a hit costs one `++` on an object already in hand.
 * @internal
 */

/** The counter a memo entry bumps on each hit. */
export interface HitCounter {
  count: number;
}

/** The memo hits of one engine, by provider. */
export class MemoHitTally {
  readonly #byProvider = new Map<string, HitCounter>();

  /** The counter of `provider`'s hits, created at 0 on first use. */
  counter(provider: string): HitCounter {
    let counter = this.#byProvider.get(provider);
    if (counter === undefined) this.#byProvider.set(provider, (counter = { count: 0 }));
    return counter;
  }

  /** `[provider, hits]` of every provider that has a counter, by provider. */
  series(): Array<[string, number]> {
    return [...this.#byProvider].map(([provider, c]): [string, number] => [provider, c.count]).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  }
}

// Engine ids are never reused in a process, so a tally stays its engine's; one small map per
// engine ever opened is kept, so that counters stay monotonic while any instance is on it.
const tallies = new Map<number, MemoHitTally>();

/** The tally of the engine `engineId` (`handle.stats().engineId`). */
export function memoHitTally(engineId: number): MemoHitTally {
  let tally = tallies.get(engineId);
  if (tally === undefined) tallies.set(engineId, (tally = new MemoHitTally()));
  return tally;
}
