// Runs app instances as separate Node processes (cluster-worker.js) on one store, and reads
// what they report.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { Authpipe } from '../..';
import { psql } from '../helpers';
import { followUntil, type OidcProvider } from './oidc';

export interface WorkerReport {
  index: number;
  calls: number;
  errors: Record<string, number>;
  erroredConnections: string[];
  expiredReturns: number;
  introspected: number;
  /** Introspected tokens the server no longer accepted, but that were valid when returned. */
  expiredSinceReturn: number;
  /** Returned tokens that were not valid when returned (or that the server never issued), with the evidence. */
  inactive: Array<{ userId: string; verdict: 'invalid' | 'unknown'; returnedAt: number; expiresAt: number; serverExpiresAt?: number; grantRevoked?: boolean }>;
  waits: Array<{ userId: string; ms: number; at: number }>;
  problems: Array<{ type: string; userId: string; code?: string; message?: string }>;
  /** Tokens this worker refreshed itself: `${userId}|${expiresAt}` -> when it committed them (ms). */
  own: Record<string, number>;
  /** When this worker first returned each token: `${userId}|${expiresAt}` -> ms. */
  firstServed: Record<string, number>;
  stats: { remoteChanges: number; resyncs: number; storeReads: number; remoteChangeLagMs: [number, number, number] | null };
  /** `authpipe.metrics()` as the worker closed: the Prometheus text. */
  metrics: string;
  /** When its callers stopped, and when its close() resolved (ms). */
  endedAt: number;
  closedAt: number;
}

export interface ClusterOptions {
  store: string;
  masterKey: string;
  oidc: OidcProvider;
  redirectUri: string;
  refs: ReadonlyArray<{ provider: string; tenantId: string; userId: string }>;
  workers: number;
  httpTimeoutMs?: number;
  healthCheckIntervalMs?: number;
  /** Each worker's provider settings (default: the server's, the same for all). */
  providerFor?: (index: number) => Record<string, unknown>;
}

/**
 * The connections whose refresh lease the process `pid` holds in `store` (an SQLite file or a
 * PostgreSQL URL with its schema). Read just after a kill -9, these are the refreshes it had
 * under way: the only ones whose rotated refresh token may have reached it and never the store.
 */
export function refreshLeasesHeldBy(store: string, pid: number): string[] {
  const query = (table: string) => `SELECT user_id FROM ${table} WHERE purpose = 'refresh' AND owner LIKE '${pid}:%'`;
  const out = store.startsWith('postgres')
    ? psql(query(`${new URL(store).searchParams.get('schema')}.leases`))
    : execFileSync('sqlite3', ['-cmd', '.timeout 10000', store.replace(/^sqlite:/, ''), query('leases')], { encoding: 'utf8' });
  return out.split('\n').filter(Boolean);
}

/** Connects `count` users through the authorization server, from a short-lived instance. */
const BATCH = Number(process.env.CONNECT_BATCH ?? 8);
export async function connectUsers(options: { store: string; masterKey: string; oidc: OidcProvider; redirectUri: string; count: number }) {
  const { oidc, redirectUri } = options;
  const authpipe = new Authpipe({
    store: options.store,
    masterKey: options.masterKey,
    healthCheckIntervalMs: 0,
    providers: { oidc: oidc.providerConfig(redirectUri) },
  });
  const refs = Array.from({ length: options.count }, (_, i) => ({ provider: 'oidc', tenantId: `tenant_${i % 10}`, userId: `user_${i}` }));
  for (let i = 0; i < refs.length; i += BATCH) {
    await Promise.all(
      refs.slice(i, i + BATCH).map(async (ref) => {
        const { url } = await authpipe.startConnect(ref);
        await authpipe.handleCallback({ url: await followUntil(url, redirectUri) });
      }),
    );
  }
  await authpipe.close();
  return refs;
}


export class Cluster {
  private readonly killed = new Set<number>();

  private constructor(
    private readonly children: ChildProcess[],
    private readonly lines: Interface[],
    readonly pids: number[],
  ) {}

  /** Starts the workers and waits until each has its store open. */
  static async start(options: ClusterOptions): Promise<Cluster> {
    const children: ChildProcess[] = [];
    const lines: Interface[] = [];
    for (let index = 0; index < options.workers; index++) {
      const config = {
        index,
        workers: options.workers,
        refs: options.refs,
        store: options.store,
        masterKey: options.masterKey,
        httpTimeoutMs: options.httpTimeoutMs,
        healthCheckIntervalMs: options.healthCheckIntervalMs || 0,
        provider: options.providerFor?.(index) ?? options.oidc.providerConfig(options.redirectUri),
      };
      const child = spawn(process.execPath, [join(__dirname, 'cluster-worker.js'), JSON.stringify(config)], { stdio: ['pipe', 'pipe', 'inherit'] });
      children.push(child);
      lines.push(createInterface({ input: child.stdout! }));
    }
    const ready = await Promise.all(lines.map(async (l) => JSON.parse(((await once(l, 'line')) as [string])[0]) as { ready?: boolean; pid: number; fatal?: string }));
    for (const r of ready) if (!r.ready) throw new Error(`a worker failed to start: ${JSON.stringify(r)}`);
    return new Cluster(children, lines, ready.map((r) => r.pid));
  }

  /** Lets every worker loop until `deadline` (ms since the epoch). */
  go(deadline: number): void {
    for (const child of this.children) child.stdin!.write(`go ${deadline}\n`);
  }

  /** Ends the callers' loops of the workers still alive now, as their deadline would. */
  stop(): void {
    this.children.forEach((child, i) => this.killed.has(i) || child.stdin!.write('stop\n'));
  }

  /** kill -9. */
  kill(index: number): void {
    this.killed.add(index);
    this.children[index]!.kill('SIGKILL');
  }

  /** The reports of the workers still alive, once each has ended. */
  async reports(): Promise<WorkerReport[]> {
    const reports = await Promise.all(
      this.children.map(async (child, i) => {
        if (this.killed.has(i)) return null;
        const [line] = (await once(this.lines[i]!, 'line')) as [string];
        if (child.exitCode === null) await once(child, 'exit');
        const report = JSON.parse(line) as WorkerReport & { fatal?: string };
        if (report.fatal) throw new Error(`worker ${i}: ${report.fatal}`);
        return report;
      }),
    );
    return reports.filter((r): r is WorkerReport => r !== null);
  }
}

/** What the workers saw together. */
export function summarise(reports: WorkerReport[]) {
  const committedAt = new Map(reports.flatMap((r) => Object.entries(r.own)));
  // Commit -> served in another process: from the refreshing process's clock reading just before
  // its commit to the first getCredential elsewhere that returned the new token (so it includes
  // the wait until that worker's loop came back to the connection).
  const propagation: number[] = [];
  for (const r of reports) {
    for (const [token, servedAt] of Object.entries(r.firstServed)) {
      const committed = committedAt.get(token);
      // Skip its own, and tokens refreshed by a worker now gone.
      if (committed === undefined || token in r.own) continue;
      propagation.push(servedAt - committed);
    }
  }
  propagation.sort((a, b) => a - b);
  const at = (q: number) => propagation[Math.min(propagation.length - 1, Math.floor(q * propagation.length))] ?? NaN;
  const errors: Record<string, number> = {};
  for (const r of reports) for (const [code, n] of Object.entries(r.errors)) errors[code] = (errors[code] ?? 0) + n;
  return {
    calls: reports.reduce((n, r) => n + r.calls, 0),
    errors,
    expiredReturns: reports.reduce((n, r) => n + r.expiredReturns, 0),
    introspected: reports.reduce((n, r) => n + r.introspected, 0),
    expiredSinceReturn: reports.reduce((n, r) => n + r.expiredSinceReturn, 0),
    inactive: reports.flatMap((r) => r.inactive),
    problems: reports.flatMap((r) => r.problems),
    refreshesByThisCluster: committedAt.size,
    refreshesPerWorker: reports.map((r) => Object.keys(r.own).length),
    propagationMs: { samples: propagation.length, median: at(0.5), p99: at(0.99), max: propagation.at(-1) ?? NaN },
    remoteChanges: reports.map((r) => r.stats.remoteChanges),
    /** Commit elsewhere -> this process's cache, per worker: [median, p99, max] ms. */
    cacheLagMs: reports.map((r) => r.stats.remoteChangeLagMs),
    resyncs: reports.map((r) => r.stats.resyncs),
  };
}

/** The sum of every series of the (counter or gauge) metric `name` in Prometheus text. */
export function metricSum(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const match = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (match?.[1] === name) sum += Number(match[3]);
  }
  return sum;
}
