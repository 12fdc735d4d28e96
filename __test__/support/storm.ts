// Crash storms: two app processes (cluster-worker.js, the real addon) refresh connections of a
// strict rotating authorization server (oidc-server.mjs: 2-second access tokens, refresh-token
// rotation with reuse detection) on one store, and are killed with SIGKILL at random moments,
// round after round. After each kill a fresh instance opens the store and checks every
// connection against the server's pair ledger:
//
// - the store opens, and every connection not revoked decrypts: checkConnection() opens its
//   sealed tokens and presents the stored access token to the server's introspection, which
//   tells which token pair of which grant it came from;
// - the stored pair is one pair, old or new, never a mix: refreshConnection() then presents
//   the stored refresh token, and it must come from the same pair as the access token;
// - the only connections lost are those whose rotated refresh token existed only in a killed
//   process: the server issued a pair after the stored one to a request of a killed worker
//   (the ledger tags each worker's token requests), and that worker held the connection's
//   refresh lease when it died (refreshLeasesHeldBy, the cluster test's evidence). A stored
//   pair that is the server's latest must refresh.
//
// Kills come at uniform random moments, or in the dangerous window: right after the server has
// sent a victim a rotated pair, before it can have stored it. Plans come from a seeded RNG; the
// seed is printed, and STORM_SEED replays the same plans (not the same interleavings).
import { Authpipe } from '../..';
import { Cluster, connectUsers, refreshLeasesHeldBy, summarise } from './cluster';
import { followUntil, type GrantLedger, type OidcProvider, type Rotation } from './oidc';

type Ref = { provider: string; tenantId: string; userId: string };

export interface StormOptions {
  kind: 'sqlite' | 'postgres';
  store: string;
  masterKey: string;
  oidc: OidcProvider;
  redirectUri: string;
  connections: number;
  /** Rounds, each with one kill moment (of one worker or both). */
  kills: number;
  seed: number;
  /** The workers' request timeout; a dead worker's refresh leases last this + 5 s. */
  httpTimeoutMs: number;
  log: (line: string) => void;
}

/** Why a connection was lost, with the evidence. */
export interface Loss {
  round: number;
  userId: string;
  /** The pair the store held, and the newest the server had issued (to `issuedTo`). */
  storedSeq: number;
  lostSeq: number;
  issuedTo: number | null;
  /** The server answered the lost pair this long before the kill (negative: after it). */
  answeredBeforeKillMs: number;
  /** Whether a killed worker held the connection's refresh lease when it died. */
  leaseHeldByKilled: boolean;
  /** Who found out: the surviving worker (its refresh was refused) or the check after the kill. */
  foundBy: 'survivor' | 'check';
}

export interface StormResult {
  kind: string;
  seed: number;
  rounds: number;
  processesKilled: number;
  plans: Record<string, number>;
  connections: number;
  /** Refresh grants the server answered (workers' and the checks'). */
  refreshes: number;
  pairsChecked: number;
  mixedPairs: number;
  lost: Loss[];
  /** Window kills whose triggering rotation was lost (the kill fell between response and store write). */
  windowHits: number;
  integrityFailures: Array<Record<string, unknown>>;
  survivorErrors: Record<string, number>;
  seconds: number;
}

/** mulberry32: a small seeded PRNG, so a round's plan can be replayed from the seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Plan {
  /** The workers to kill; the first is the one whose rotation a window kill waits for. */
  victims: number[];
  timing: 'uniform' | 'window';
  /** Uniform: the kill this long after "go"; window: the first victim's rotation after it. */
  delayMs: number;
  /** How long a survivor goes on after the kill before it is stopped. */
  survivorMs: number;
}

function plan(random: () => number): Plan {
  const first = random() < 0.5 ? 0 : 1;
  const both = random() < 0.3;
  return {
    victims: both ? [first, 1 - first] : [first],
    timing: random() < 0.5 ? 'window' : 'uniform',
    delayMs: Math.round(300 + random() * 2700),
    survivorMs: Math.round(random() * 1000),
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Kills the plan's victims at its moment; resolves with when, and the rotation a window kill followed. */
async function killAtMoment(cluster: Cluster, oidc: OidcProvider, p: Plan): Promise<{ killedAt: number; rotation?: Rotation }> {
  await sleep(p.delayMs);
  let rotation: Rotation | undefined;
  if (p.timing === 'window') {
    // Killed in the listener, as soon as the server has sent the victim its new pair. (Should
    // the victim never refresh again, which would itself be a failure elsewhere, a late kill.)
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, 30_000);
      const unsubscribe = oidc.onRotation((r) => {
        if (r.worker !== p.victims[0]) return;
        rotation = r;
        done();
      });
      function done() {
        for (const v of p.victims) cluster.kill(v);
        clearTimeout(timer);
        unsubscribe();
        resolve();
      }
    });
  } else {
    for (const v of p.victims) cluster.kill(v);
  }
  return { killedAt: Date.now(), rotation };
}

/** What the check after a kill found. */
export interface Checked {
  grantOf: Map<string, string>;
  pairsChecked: number;
  mixedPairs: number;
  lost: Loss[];
  failures: Array<Record<string, unknown>>;
}

/** The killed workers of a round, with their refresh leases at death. */
export interface Killed {
  round: number;
  workers: number[];
  heldLeases: Set<string>;
  killedAt: number;
}

/**
 * A fresh instance opens the store and checks every connection (see the top of this file);
 * `grantOf` (userId -> grant id) is what the previous check learnt, empty the first time.
 */
export async function checkConnections(o: Pick<StormOptions, 'store' | 'masterKey' | 'oidc' | 'redirectUri' | 'httpTimeoutMs'>, refs: Ref[], grantOf: Map<string, string>, killed: Killed | null): Promise<Checked> {
  const failures: Array<Record<string, unknown>> = [];
  const lost: Loss[] = [];
  let pairsChecked = 0;
  let mixedPairs = 0;
  const learnt = new Map(grantOf);
  let authpipe: Authpipe;
  // Its own background refreshes wait until every access token has been read.
  await o.oidc.holdUntagged(true);
  try {
    authpipe = new Authpipe({ store: o.store, masterKey: o.masterKey, healthCheckIntervalMs: 0, httpTimeoutMs: o.httpTimeoutMs, providers: { oidc: o.oidc.providerConfig(o.redirectUri) } });
    await authpipe.ready();
  } catch (e) {
    await o.oidc.holdUntagged(false);
    return { grantOf, pairsChecked, mixedPairs, lost, failures: [{ failure: 'store did not open', code: (e as { code?: string }).code, message: String(e) }] };
  }
  try {
    const accessSeq = new Map<string, number>();
    const revoked: Ref[] = [];
    let probes = (await o.oidc.lastProbe())?.count ?? 0;
    // One at a time: the server's last probe is this connection's.
    for (const ref of refs) {
      const connection = await authpipe.getConnection(ref);
      if (connection.status === 'revoked') {
        revoked.push(ref);
        continue;
      }
      try {
        await authpipe.checkConnection(ref);
      } catch (e) {
        failures.push({ userId: ref.userId, failure: 'check failed (decrypt or probe)', code: (e as { code?: string }).code });
        continue;
      }
      const probe = await o.oidc.lastProbe();
      if (!probe || probe.count !== probes + 1 || probe.grantId === null || probe.seq === null) {
        failures.push({ userId: ref.userId, failure: 'its access token was not presented, or is unknown to the server', probe });
        probes = probe?.count ?? probes;
        continue;
      }
      probes = probe.count;
      const known = learnt.get(ref.userId);
      if (known !== undefined && known !== probe.grantId) failures.push({ userId: ref.userId, failure: "stores another grant's access token" });
      learnt.set(ref.userId, probe.grantId);
      accessSeq.set(ref.userId, probe.seq);
    }
    const before = await o.oidc.ledger();
    // Now the refresh token: the first presented since the hold (by a forced refresh, which
    // waits out a dead worker's lease, or by a background refresh retried just before it).
    await o.oidc.holdUntagged(false);
    const refreshed = new Map<string, string | null>();
    await Promise.all(
      refs
        .filter((ref) => accessSeq.has(ref.userId))
        .map(async (ref) => {
          try {
            const c = await authpipe.refreshConnection(ref);
            refreshed.set(ref.userId, c.status === 'active' ? null : c.status);
          } catch (e) {
            refreshed.set(ref.userId, (e as { code?: string }).code ?? String(e));
          }
        }),
    );
    const after = await o.oidc.ledger();
    const explain = (userId: string, entry: GrantLedger, storedSeq: number, foundBy: Loss['foundBy']) => {
      const loss: Loss = {
        round: killed?.round ?? 0,
        userId,
        storedSeq,
        lostSeq: entry.latest.seq,
        issuedTo: entry.latest.worker,
        answeredBeforeKillMs: killed ? killed.killedAt - entry.latest.at : NaN,
        leaseHeldByKilled: killed?.heldLeases.has(userId) ?? false,
        foundBy,
      };
      lost.push(loss);
      const issuedToKilled = killed !== null && entry.latest.worker !== null && killed.workers.includes(entry.latest.worker);
      if (!issuedToKilled || !loss.leaseHeldByKilled) failures.push({ failure: 'lost, but its newest pair did not exist only in a killed process', ...loss });
    };
    for (const [userId, seq] of accessSeq) {
      const grantId = learnt.get(userId)!;
      const presented = after[grantId]?.checkRefresh;
      if (!presented) {
        failures.push({ userId, failure: 'the check did not present its refresh token', outcome: refreshed.get(userId) });
        continue;
      }
      pairsChecked++;
      if (presented.seq !== seq) {
        mixedPairs++;
        failures.push({ userId, failure: 'mixed pair', accessSeq: seq, refreshSeq: presented.seq });
      }
      const latest = before[grantId]!.latest.seq;
      if (presented.seq === latest) {
        if (presented.outcome !== 'rotated' || refreshed.get(userId) !== null) failures.push({ userId, failure: "the server's newest pair did not refresh", outcome: presented.outcome, status: refreshed.get(userId) });
      } else {
        explain(userId, before[grantId]!, presented.seq, 'check');
      }
    }
    for (const ref of revoked) {
      // Revoked during the round: a survivor's refresh was refused. Its presented token must
      // have been spent by a killed worker's refresh whose pair never reached the store.
      const grantId = learnt.get(ref.userId);
      const entry = grantId === undefined ? undefined : before[grantId];
      if (!entry?.lastRefresh || entry.lastRefresh.outcome === 'rotated' || entry.lastRefresh.seq >= entry.latest.seq) {
        failures.push({ userId: ref.userId, failure: 'revoked without a spent refresh token', ledger: entry });
        continue;
      }
      explain(ref.userId, entry, entry.lastRefresh.seq, 'survivor');
    }
    // The lost connect again, so that every round has them all.
    for (const loss of lost) {
      const ref = refs.find((r) => r.userId === loss.userId)!;
      const { url } = await authpipe.startConnect(ref);
      await authpipe.handleCallback({ url: await followUntil(url, o.redirectUri) });
      await authpipe.checkConnection(ref);
      const probe = await o.oidc.lastProbe();
      if (probe?.grantId) learnt.set(ref.userId, probe.grantId);
    }
    return { grantOf: learnt, pairsChecked, mixedPairs, lost, failures };
  } finally {
    await authpipe.close();
    await o.oidc.holdUntagged(false);
  }
}

/** Runs the storm: connects the users, learns their grants, then `kills` rounds. */
export async function runStorm(o: StormOptions): Promise<StormResult> {
  const random = seededRandom(o.seed);
  const started = Date.now();
  o.log(`crash storm ${o.kind}: seed ${o.seed} (STORM_SEED=${o.seed} replays these plans), ${o.kills} rounds, ${o.connections} connections`);
  const refs = await connectUsers({ store: o.store, masterKey: o.masterKey, oidc: o.oidc, redirectUri: o.redirectUri, count: o.connections });
  const baseline = await checkConnections(o, refs, new Map(), null);
  const result: StormResult = {
    kind: o.kind,
    seed: o.seed,
    rounds: 0,
    processesKilled: 0,
    plans: {},
    connections: o.connections,
    refreshes: 0,
    pairsChecked: baseline.pairsChecked,
    mixedPairs: baseline.mixedPairs,
    lost: [...baseline.lost],
    windowHits: 0,
    integrityFailures: baseline.failures.map((f) => ({ round: 0, ...f })),
    survivorErrors: {},
    seconds: 0,
  };
  let grantOf = baseline.grantOf;
  const statsBefore = await o.oidc.stats();
  for (let round = 1; round <= o.kills; round++) {
    const roundStarted = Date.now();
    const p = plan(random);
    const cluster = await Cluster.start({
      store: o.store,
      masterKey: o.masterKey,
      oidc: o.oidc,
      redirectUri: o.redirectUri,
      refs,
      workers: 2,
      httpTimeoutMs: o.httpTimeoutMs,
      providerFor: (index) => o.oidc.workerConfig(o.redirectUri, index),
    });
    const refreshesBefore = (await o.oidc.stats()).refreshGrants;
    cluster.go(Date.now() + 3_600_000); // ended by the kill, and stop() for a survivor
    const { killedAt, rotation } = await killAtMoment(cluster, o.oidc, p);
    const heldLeases = new Set(p.victims.flatMap((v) => refreshLeasesHeldBy(o.store, cluster.pids[v]!)));
    if (p.victims.length === 1) await sleep(p.survivorMs);
    cluster.stop();
    const survivors = summarise(await cluster.reports());
    for (const [code, n] of Object.entries(survivors.errors)) result.survivorErrors[code] = (result.survivorErrors[code] ?? 0) + n;
    const killed: Killed = { round, workers: p.victims, heldLeases, killedAt };
    const userOfGrant = new Map([...grantOf].map(([userId, grantId]) => [grantId, userId]));
    const checked = await checkConnections(o, refs, grantOf, killed);
    grantOf = checked.grantOf;
    const lostNow = new Set(checked.lost.map((l) => l.userId));
    // A token a survivor served and the server refused: only of a connection lost this round
    // (its grant revoked on the reuse, after the token was served).
    for (const bad of survivors.inactive) if (!lostNow.has(bad.userId)) checked.failures.push({ failure: 'a survivor served a token the server refused', ...bad });
    const windowHit = rotation !== undefined && checked.lost.some((l) => userOfGrant.get(rotation.grantId) === l.userId && l.lostSeq === rotation.seq);
    const key = `${p.timing}/${p.victims.length === 2 ? 'both' : 'one'}`;
    result.plans[key] = (result.plans[key] ?? 0) + 1;
    result.rounds++;
    result.processesKilled += p.victims.length;
    result.pairsChecked += checked.pairsChecked;
    result.mixedPairs += checked.mixedPairs;
    result.lost.push(...checked.lost);
    if (windowHit) result.windowHits++;
    result.integrityFailures.push(...checked.failures.map((f) => ({ round, ...f })));
    const refreshes = (await o.oidc.stats()).refreshGrants - refreshesBefore;
    o.log(
      `round ${round}/${o.kills} ${o.kind}: kill ${key} of worker ${p.victims.join('+')} at +${p.delayMs} ms${rotation ? ' (on a rotation)' : ''}; ` +
        `leases held ${heldLeases.size}; refreshes ${refreshes}; pairs checked ${checked.pairsChecked}; lost ${checked.lost.length}` +
        `${checked.lost.length ? ` (${checked.lost.map((l) => `${l.userId} pair ${l.lostSeq} to worker ${l.issuedTo}, answered ${Math.abs(l.answeredBeforeKillMs)} ms ${l.answeredBeforeKillMs < 0 ? 'after' : 'before'} the kill, found by ${l.foundBy}`).join('; ')})` : ''}; ` +
        `failures ${checked.failures.length}; ${((Date.now() - roundStarted) / 1000).toFixed(1)} s`,
    );
    for (const f of checked.failures) o.log(`  integrity failure: ${JSON.stringify(f)}`);
  }
  result.refreshes = (await o.oidc.stats()).refreshGrants - statsBefore.refreshGrants;
  result.seconds = Math.round((Date.now() - started) / 1000);
  return result;
}
