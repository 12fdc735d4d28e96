// A real Prometheus server (Debian's /usr/bin/prometheus) on 127.0.0.1 for tests: it scrapes
// the given targets every second into a temporary TSDB, and answers its HTTP API.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const PROMETHEUS_BINARY = '/usr/bin/prometheus';

/** One series of an instant query's answer. */
export interface PromSample {
  metric: Record<string, string>;
  value: [number, string];
}

export interface PrometheusServer {
  origin: string;
  /** An instant query through /api/v1/query. */
  query(promql: string): Promise<PromSample[]>;
  /** The loaded rules: name, health (`ok`, `err`, `unknown`), last error and alert state, from /api/v1/rules. */
  rules(): Promise<Array<{ name: string; health: string; lastError: string; state?: string }>>;
  /** The scrape targets' health (`up`, `down`, `unknown`) and last error, from /api/v1/targets. */
  targets(): Promise<Array<{ scrapeUrl: string; health: string; lastError: string }>>;
  /** What the server wrote to stderr (its log), for a failure's message. */
  log(): string;
  close(): Promise<void>;
}

/** A free TCP port on 127.0.0.1 (released for the caller to bind). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * Starts Prometheus scraping `targets` (`host:port`, path /metrics) every second, evaluating
 * the rules of `ruleFiles` every second too; resolves once it is ready.
 */
export async function startPrometheus(targets: readonly string[], ruleFiles: readonly string[] = []): Promise<PrometheusServer> {
  const dir = mkdtempSync(join(tmpdir(), 'authpipe-prometheus-'));
  const config = join(dir, 'prometheus.yml');
  writeFileSync(
    config,
    [
      'global:',
      '  scrape_interval: 1s',
      '  scrape_timeout: 1s',
      '  evaluation_interval: 1s',
      `rule_files: [${ruleFiles.map((f) => `'${f}'`).join(', ')}]`,
      'scrape_configs:',
      '  - job_name: authpipe-test-app',
      '    metrics_path: /metrics',
      '    static_configs:',
      `      - targets: [${targets.map((t) => `'${t}'`).join(', ')}]`,
      '',
    ].join('\n'),
  );
  const port = await freePort();
  const child: ChildProcess = spawn(
    PROMETHEUS_BINARY,
    [`--config.file=${config}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = once(child, 'exit');
  const origin = `http://127.0.0.1:${port}`;
  const close = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  // Ready: /-/ready answers 200 once the TSDB is open and scraping has begun.
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`prometheus exited (${child.exitCode}): ${stderr.slice(-2000)}`);
    const ready = await fetch(`${origin}/-/ready`).then((r) => r.status === 200, () => false);
    if (ready) break;
    if (Date.now() > deadline) {
      await close();
      throw new Error(`prometheus did not get ready: ${stderr.slice(-2000)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const api = async <T>(path: string): Promise<T> => {
    const res = await fetch(`${origin}${path}`);
    const body = (await res.json()) as { status: string; data: T; error?: string };
    if (body.status !== 'success') throw new Error(`prometheus ${path}: ${body.error}`);
    return body.data;
  };
  return {
    origin,
    async query(promql) {
      const data = await api<{ resultType: string; result: PromSample[] }>(`/api/v1/query?${new URLSearchParams({ query: promql })}`);
      return data.result;
    },
    async rules() {
      const data = await api<{ groups: Array<{ rules: Array<{ name: string; health: string; lastError?: string; state?: string }> }> }>('/api/v1/rules');
      return data.groups.flatMap((g) => g.rules.map(({ name, health, lastError, state }) => ({ name, health, lastError: lastError ?? '', state })));
    },
    async targets() {
      const data = await api<{ activeTargets: Array<{ scrapeUrl: string; health: string; lastError: string }> }>('/api/v1/targets');
      return data.activeTargets.map(({ scrapeUrl, health, lastError }) => ({ scrapeUrl, health, lastError }));
    },
    log: () => stderr,
    close,
  };
}
