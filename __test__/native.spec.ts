import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { Authpipe, AuthpipeError, ERROR_CODES, type AuthpipeEvents, type ConnectionEventName } from '..';
import { newKey, open, rejection, tempDir, testStore } from './helpers';

// The generated loader, internal to the package.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const binding = require('../binding.js');
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { fromNative } = require('../dist/errors.js');

const ref = { provider: 'attio', tenantId: 'org_acme', userId: 'user_1' };

test('the JS error codes are exactly the core error codes', () => {
  expect([...ERROR_CODES]).toEqual([...binding.errorCodes()]);
});

// `AuthpipeEvents` is written by hand (each event's payload type); its keys must be exactly the
// generated event names. A compile error (tsc -p __test__) otherwise.
const eventsListEveryName: [keyof AuthpipeEvents] extends [ConnectionEventName] ? ([ConnectionEventName] extends [keyof AuthpipeEvents] ? true : false) : false = true;
test('AuthpipeEvents has one entry per event name', () => expect(eventsListEveryName).toBe(true));

// The panicking calls exist only with the `test-hooks` feature (`npm run build:debug`, the build
// tests run); after `npm run build` (release, as `npm run bench` leaves it) there is nothing to call.
const testHooks = typeof binding.testOnlyPanic === 'function';

test('only the tests\' build enables the test-only calls', () => {
  const { scripts } = JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  expect(scripts['build:debug']).toContain('--features test-hooks');
  expect(scripts.build).not.toContain('test-hooks');
  // What `npm run pack` and the release workflow build: release, no features.
  const packBuild = readFileSync(join(__dirname, '..', 'scripts', 'pack.mjs'), 'utf8').match(/\['napi', 'build', [^\n]*/g);
  expect(packBuild).toHaveLength(1);
  expect(packBuild![0]).toContain("'--release'");
  expect(packBuild![0]).not.toMatch(/features/);
  const releaseBuilds = readFileSync(join(__dirname, '..', '.github', 'workflows', 'release.yml'), 'utf8').match(/napi build [^\n]*/g);
  expect(releaseBuilds?.length).toBeGreaterThan(0);
  for (const build of releaseBuilds!) {
    expect(build).toContain('--release');
    expect(build).not.toMatch(/features/);
  }
});

(testHooks ? test : test.skip)('a Rust panic becomes an INTERNAL AuthpipeError, never a process abort', async () => {
  let thrown: unknown;
  try {
    binding.testOnlyPanic('boom in sync code');
  } catch (e) {
    thrown = fromNative(e);
  }
  expect(thrown).toBeInstanceOf(AuthpipeError);
  expect((thrown as AuthpipeError).code).toBe('INTERNAL');
  expect((thrown as AuthpipeError).message).toContain('boom in sync code');

  const asyncErr = await binding.testOnlyPanicAsync('boom in async code').catch(fromNative);
  expect(asyncErr.code).toBe('INTERNAL');
  expect(asyncErr.message).toMatch(/panic/i); // napi reports async panics without their payload

  // The process, and the addon, carry on.
  const authpipe = new Authpipe({ store: testStore(), masterKey: newKey() });
  await authpipe.importConnection({ ...ref, accessToken: 'still-alive' });
  expect((await authpipe.getCredential(ref)).credential).toBe('still-alive');
  await authpipe.close();
});

describe('worker threads', () => {
  const dir = tempDir();
  const store = join(dir, 'workers.db');
  const masterKey = newKey();
  const authpipe = open({ store, masterKey });

  /** Runs `body` in a worker with an Authpipe on the same store; resolves with what it posts. */
  function inWorker(body: string): Promise<unknown> {
    const source = `
      const { parentPort, workerData } = require('node:worker_threads');
      const { Authpipe } = require(${JSON.stringify(join(__dirname, '..'))});
      (async () => {
        const authpipe = new Authpipe({ store: workerData.store, masterKey: workerData.masterKey });
        try { parentPort.postMessage(await (async () => { ${body} })()); }
        catch (e) { parentPort.postMessage({ error: e.code, message: e.message }); }
        finally { await authpipe.close(); }
      })();`;
    return new Promise((resolve, reject) => {
      const worker = new Worker(source, { eval: true, workerData: { store, masterKey } });
      worker.once('message', resolve);
      worker.once('error', reject);
    });
  }

  test('share the engine and cache of the main thread', async () => {
    await authpipe.importConnection({ ...ref, accessToken: 'from-main' });
    const engineId = (await authpipe.stats()).engineId;
    const seen = await inWorker(`
      const reads = (await authpipe.stats()).storeReads;
      const { credential } = await authpipe.getCredential(${JSON.stringify(ref)});
      await authpipe.importConnection({ ...${JSON.stringify(ref)}, userId: 'from-worker', accessToken: 'w' });
      return { credential, engineId: (await authpipe.stats()).engineId, extraReads: (await authpipe.stats()).storeReads - reads };
    `);
    expect(seen).toEqual({ credential: 'from-main', engineId, extraReads: 0 });
    expect((await authpipe.getCredential({ ...ref, userId: 'from-worker' })).credential).toBe('w');
  });

  test('many instances and workers viewing the same counters, with GC in between, stay correct', async () => {
    const results = await Promise.all(
      Array.from({ length: 4 }, (_, i) =>
        inWorker(`
          for (let round = 0; round < 20; round++) {
            const other = new (require(${JSON.stringify(join(__dirname, '..'))}).Authpipe)({ store: workerData.store, masterKey: workerData.masterKey });
            await other.getCredential(${JSON.stringify(ref)});
            await other.close();
          }
          return (await authpipe.getCredential(${JSON.stringify(ref)})).credential + ${i};
        `),
      ),
    );
    expect(results).toEqual(['from-main0', 'from-main1', 'from-main2', 'from-main3']);
    for (let round = 0; round < 20; round++) {
      const other = new Authpipe({ store, masterKey });
      await other.importConnection({ ...ref, accessToken: `round-${round}` });
      expect((await authpipe.getCredential(ref)).credential).toBe(`round-${round}`);
      await other.close();
    }
  });

  test('a closed instance in a worker lets the worker exit', async () => {
    await expect(inWorker(`return 'done'`)).resolves.toBe('done');
  });
});

test('close() leaves nothing that keeps the process alive, event listeners included', async () => {
  const { execFileSync } = await import('node:child_process');
  const script = `
    const { Authpipe } = require(${JSON.stringify(join(__dirname, '..'))});
    const a = new Authpipe({ store: ${JSON.stringify(testStore())}, masterKey: ${JSON.stringify(newKey())} });
    a.on('connection.created', () => {});
    a.on('connection.refreshed', () => {});
    a.importConnection({ provider: 'attio', tenantId: 't', userId: 'u', accessToken: 'x' })
      .then(() => a.getCredential({ provider: 'attio', tenantId: 't', userId: 'u' }))
      .then(() => a.close())
      .then(() => console.log('closed'));`;
  const started = Date.now();
  expect(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20_000 }).trim()).toBe('closed');
  expect(Date.now() - started).toBeLessThan(20_000);
});

test('errors after close have the CLOSED code', async () => {
  const authpipe = new Authpipe({ store: testStore(), masterKey: newKey() });
  await authpipe.close();
  await rejection(authpipe.importConnection({ ...ref, accessToken: 'x' }), 'CLOSED');
});
