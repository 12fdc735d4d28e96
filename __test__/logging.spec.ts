// Structured logs through the `logger` option: first on a stand-in handle (the option's checks,
// levels, fields, pino's level changes), then with a real pino writing to a file during the
// real flow (refresh, transient failure, revocation, probes, tenant key rotation), whose every
// line is read back and scanned for every token and secret the flow saw: zero hits. Without a
// logger nothing is written anywhere. (Not driven here: a store outage and a lease takeover,
// which SQLite in one process cannot stage; the records' shapes come from the engine.)
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { attachTelemetry, telemetryOptions } from '../lib/telemetry/attach';
import { MemoHitTally } from '../lib/telemetry/memo-hits';
import { tempDir, testStore } from './helpers';
import { FakeTelemetryHandle } from './support/fake-telemetry-handle';
import { needlesFor, Scanner } from './support/planted';
import { runFlow, startRig, TENANT, until, USERS } from './support/telemetry-flow';

/** The stable event names of the telemetry contract. */
const EVENTS = [
  'refresh.succeeded',
  'refresh.failed',
  'probe.succeeded',
  'probe.failed',
  'connection.created',
  'connection.deleted',
  'connection.recovered',
  'connection.revoked',
  'connection.degraded',
  'lease.taken_over',
  'store.unavailable',
  'store.reconnected',
  'change_feed.resynced',
  'tenant_key.rotated',
  'master_key.rotated',
  'master_key.retired',
  'tenant.deleted',
];

const dir = tempDir();

/** What an AuthpipeError-throwing call said: `CODE: message`. */
function refusal(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return `${(err as { code?: string }).code}: ${(err as Error).message}`;
  }
  return 'accepted';
}

describe('on a stand-in handle', () => {
  test('the logger option: an object with trace, debug, info, warn and error; what is missing is named', () => {
    const noop = () => {};
    expect(refusal(() => telemetryOptions({ logger: { info: noop, warn: noop, error: noop } }))).toBe(
      'INVALID_ARGUMENT: logger must have the methods trace, debug, info, warn, error (a pino logger has them); it has no trace, debug',
    );
    expect(refusal(() => telemetryOptions({ logger: 'console' }))).toBe('INVALID_ARGUMENT: logger must be an object');
    expect(refusal(() => telemetryOptions({ logger: { ...console, get trace() { throw new Error('boom'); } } }))).toMatch(/^INVALID_ARGUMENT: logger\.trace could not be read/);
    // Methods inherited from a class (pino's are) count; Object.prototype's never do.
    class Base {
      trace() {}
      debug() {}
      info() {}
      warn() {}
    }
    const proto = Object.prototype as { error?: unknown };
    proto.error = noop;
    try {
      expect(refusal(() => telemetryOptions({ logger: new Base() }))).toMatch(/it has no error$/);
    } finally {
      delete proto.error;
    }
    expect(telemetryOptions({ logger: console }).logger).toBe(console);
    expect(telemetryOptions({ logger: null })).toEqual({ logger: undefined, meter: undefined });
  });

  test('records become logger[level]({ event, ...fields }, message); without a logger or meter nothing subscribes', () => {
    const calls: Array<[string, object, string | undefined]> = [];
    const recorder = Object.fromEntries(['trace', 'debug', 'info', 'warn', 'error'].map((level) => [level, (fields: object, message?: string) => calls.push([level, fields, message])]));
    const handle = new FakeTelemetryHandle();
    attachTelemetry(handle, telemetryOptions({ logger: recorder }), new MemoHitTally());
    handle.send('warn', 'refresh.failed', { provider: 'oidc', tenantId: TENANT, userId: 'u1', outcome: 'transient', code: 'http_500', durationMs: 12, attempt: 1 }, 'a refresh failed; retrying');
    handle.send('verbose', 'store.reconnected', { downMs: 40 }, 'the store answers again');
    expect(calls).toEqual([
      ['warn', { event: 'refresh.failed', provider: 'oidc', tenantId: TENANT, userId: 'u1', outcome: 'transient', code: 'http_500', durationMs: 12, attempt: 1 }, 'a refresh failed; retrying'],
      ['info', { event: 'store.reconnected', downMs: 40 }, 'the store answers again'], // an unknown level logs as info
    ]);
    const silent = new FakeTelemetryHandle();
    attachTelemetry(silent, telemetryOptions({}), new MemoHitTally());
    expect(silent.listeners).toHaveLength(0);
  });

  test("pino's level is honoured as it changes (its methods are looked up at each record)", () => {
    const lines: string[] = [];
    const sink = new Writable({ write: (chunk: Buffer, _enc, done) => (lines.push(chunk.toString()), done()) });
    const logger = pino({ level: 'info' }, sink);
    const handle = new FakeTelemetryHandle();
    attachTelemetry(handle, telemetryOptions({ logger }), new MemoHitTally());
    handle.send('debug', 'probe.succeeded', { provider: 'attio', durationMs: 5 });
    logger.level = 'debug';
    handle.send('debug', 'probe.succeeded', { provider: 'attio', durationMs: 6 });
    expect(lines.map((l) => JSON.parse(l) as Record<string, unknown>)).toEqual([expect.objectContaining({ level: 20, event: 'probe.succeeded', durationMs: 6, msg: 'probe.succeeded happened' })]);
  });
});

describe('a real pino writing to a file, through the real flow', () => {
  const logFile = join(dir, 'authpipe.log');

  test('stable event names with their fields, and no token or secret in the file', async () => {
    const logger = pino({ level: 'trace' }, pino.destination({ dest: logFile, sync: true }));
    const rig = await startRig({ store: testStore(), logger });
    let records: Array<Record<string, unknown>> = [];
    try {
      await runFlow(rig);
      const read = () => readFileSync(logFile, 'utf8').trim().split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>);
      const expected = ['refresh.succeeded', 'refresh.failed', 'connection.degraded', 'connection.revoked', 'probe.succeeded', 'probe.failed', 'tenant_key.rotated'];
      records = await until('the flow\'s records in the log file', () => {
        const now = read();
        const failures = now.filter((r) => r.event === 'refresh.failed').map((r) => r.outcome);
        return expected.every((e) => now.some((r) => r.event === e)) && failures.includes('transient') && failures.includes('revoked') ? now : undefined;
      });
    } finally {
      await rig.close();
    }
    const text = readFileSync(logFile, 'utf8');
    // Every record has a stable event name, a message, and pino's level and time.
    for (const r of records) {
      expect(EVENTS).toContain(r.event);
      expect(typeof r.msg).toBe('string');
      expect(typeof r.level).toBe('number');
    }
    const first = (event: string, where: Record<string, unknown> = {}) => records.find((r) => r.event === event && Object.entries(where).every(([k, v]) => r[k] === v));
    const ids = { provider: 'oidc', tenantId: TENANT };
    expect(first('refresh.succeeded', { userId: USERS.ok })).toMatchObject({ ...ids, level: 30, reason: 'forced', durationMs: expect.any(Number) });
    expect(first('refresh.failed', { outcome: 'transient' })).toMatchObject({ ...ids, userId: USERS.ok, level: 40, code: 'server_error', durationMs: expect.any(Number) }); // the 500's OAuth error
    expect(first('refresh.failed', { outcome: 'revoked' })).toMatchObject({ ...ids, userId: USERS.revoked, level: 40, code: 'invalid_grant' });
    expect(first('connection.revoked', { userId: USERS.revoked })).toMatchObject({ ...ids, level: 40, status: 'revoked', code: 'invalid_grant' });
    expect(first('probe.succeeded')).toMatchObject({ ...ids, userId: USERS.probed, level: 20, durationMs: expect.any(Number) });
    expect(first('probe.failed')).toMatchObject({ ...ids, userId: USERS.probed, level: 40, outcome: 'revoked' });
    expect(first('tenant_key.rotated')).toMatchObject({ tenantId: TENANT, level: 30, generation: 2, resealed: 3 });

    const hits = new Scanner(needlesFor(rig.planted, [])).scan('the log file', Buffer.from(text));
    expect(rig.planted.filter((p) => p.kind === 'refresh_token').length).toBe(3);
    expect(hits.map((h) => `${h.what} at ${h.offset}`)).toEqual([]);
    // A sample for the README (Operating, Logs): the first record of each event and outcome.
    const firsts = new Map<string, Record<string, unknown>>();
    for (const r of records) if (!firsts.has(`${r.event} ${r.outcome}`)) firsts.set(`${r.event} ${r.outcome}`, r);
    const sample = [...firsts.values()].map((r) => JSON.stringify({ ...r, pid: 4242, hostname: 'app-1' }));
    process.stdout.write(`logging: ${records.length} records, ${rig.planted.length} secrets looked for, ${hits.length} hits; the first of each event and outcome:\n${sample.join('\n')}\n`);
  }, 60_000);

  test('without a logger nothing is written anywhere: the same flow in a child prints not a byte', async () => {
    const run = await new Promise<{ code: number | null; out: string }>((resolve, reject) => {
      const child = spawn(process.execPath, ['-r', join(__dirname, 'support', 'ts-require.js'), join(__dirname, 'support', 'telemetry-silent-child.ts')], {
        env: { ...process.env, NODE_ENV: 'test' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString()));
      child.stderr.on('data', (c: Buffer) => (out += c.toString()));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, out }));
    });
    expect(run).toEqual({ code: 0, out: '' });
  }, 60_000);
});
