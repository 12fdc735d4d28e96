import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { Authpipe } from '..';
import { jwtLike, newKey, open, opaque, rejection, tempDir, testStore } from './helpers';

const ref = { provider: 'attio', tenantId: 'org_acme', userId: 'user_1' };

/** Every byte of the store's files (database, WAL, shared memory). */
function storeBytes(dir: string): Buffer {
  return Buffer.concat(readdirSync(dir).map((f) => readFileSync(join(dir, f))));
}

describe('master keys', () => {
  const dir = tempDir();
  const store = join(dir, 'keys.db');
  const oldKey = newKey();
  const newerKey = newKey();

  beforeAll(async () => {
    const first = new Authpipe({ store, masterKeys: [{ id: 'old', key: oldKey }] });
    await first.importConnection({ ...ref, accessToken: 'token-a' });
    await first.importConnection({ ...ref, tenantId: 'org_b', accessToken: 'token-b' });
    await first.close();
  });

  test('a wrong master key fails clearly, naming key ids and never key material', async () => {
    const wrong = newKey();
    const authpipe = new Authpipe({ store, masterKeys: [{ id: 'old', key: wrong }] });
    const err = await rejection(authpipe.ready(), 'VAULT_KEY_MISMATCH');
    expect(err.message).toContain("'old'");
    expect(err.message).not.toContain(wrong);
    await rejection(authpipe.getCredential(ref), 'VAULT_KEY_MISMATCH');
    await authpipe.close();

    const unnamed = new Authpipe({ store, masterKey: wrong });
    expect((await rejection(unnamed.ready(), 'VAULT_KEY_MISMATCH')).message).toMatch(/wrapped with master key\(s\) 'old'/);
    await unnamed.close();
  });

  test('rotation keeps every record readable, and the old key can then be retired', async () => {
    const both = new Authpipe({ store, masterKeys: [{ id: 'new', key: newerKey }, { id: 'old', key: oldKey }] });
    await rejection(both.retireMasterKey('old'), 'KEY_IN_USE');
    expect(await both.rotateMasterKey()).toEqual({ primaryKeyId: 'new', rewrapped: 2, alreadyCurrent: 0 });
    expect(await both.rotateMasterKey()).toEqual({ primaryKeyId: 'new', rewrapped: 0, alreadyCurrent: 2 });
    expect((await both.getCredential(ref)).credential).toBe('token-a');
    await rejection(both.retireMasterKey('new'), 'INVALID_ARGUMENT');
    await both.retireMasterKey('old');
    await both.close();

    const onlyNew = new Authpipe({ store, masterKeys: [{ id: 'new', key: newerKey }] });
    expect((await onlyNew.getCredential({ ...ref, tenantId: 'org_b' })).credential).toBe('token-b');
    await onlyNew.close();

    const onlyOld = new Authpipe({ store, masterKeys: [{ id: 'old', key: oldKey }] });
    expect((await rejection(onlyOld.ready(), 'INVALID_ARGUMENT')).message).toContain('was retired');
    await onlyOld.close();
  });

  test('bad key material throws INVALID_ARGUMENT from the constructor, naming the option, not the value', () => {
    for (const [options, field] of [
      [{ masterKey: 'c2hvcnQ=' }, /^masterKey must be 32 random bytes/],
      [{ masterKey: Buffer.alloc(31) }, /^masterKey must be 32 random bytes/],
      [{ masterKeys: [{ id: 'a', key: newKey() }, { id: 'b', key: 'c2hvcnQ=' }] }, /^masterKeys\[1\]\.key must be 32 random bytes/],
    ] as const) {
      const err = (() => {
        try {
          new Authpipe({ store: testStore(), ...options });
        } catch (e) {
          return e as Error;
        }
        throw new Error('did not throw');
      })();
      expect(err).toMatchObject({ name: 'AuthpipeError', code: 'INVALID_ARGUMENT' });
      expect(err.message).toMatch(field);
      expect(err.message).not.toContain('c2hvcnQ=');
    }
  });
});

describe('tenant data keys', () => {
  test('rotateTenantKey re-seals the tenant online and says so; an unknown tenant is TENANT_NOT_FOUND', async () => {
    const authpipe = new Authpipe({ store: testStore(), masterKey: newKey() });
    const other = { ...ref, tenantId: 'org_other' };
    await authpipe.importConnection({ ...ref, accessToken: 'token-a', refreshToken: 'refresh-a' });
    await authpipe.importConnection({ ...ref, userId: 'user_2', accessToken: 'token-b' });
    await authpipe.importConnection({ ...other, accessToken: 'token-c' });
    await authpipe.setSecret({ tenantId: 'org_acme', name: 'webhook', value: 's3cret' });
    expect((await authpipe.getCredential(ref)).credential).toBe('token-a');

    const rotation = await authpipe.rotateTenantKey('org_acme');
    expect(rotation).toEqual({ tenantId: 'org_acme', generation: 2, resealed: 3 });
    expect(Object.isFrozen(rotation)).toBe(true);
    expect((await authpipe.getCredential(ref)).credential).toBe('token-a');
    expect((await authpipe.getCredential({ ...ref, userId: 'user_2' })).credential).toBe('token-b');
    expect(await authpipe.getSecret({ tenantId: 'org_acme', name: 'webhook' })).toBe('s3cret');
    expect((await authpipe.getCredential(other)).credential).toBe('token-c');
    expect(await authpipe.rotateTenantKey('org_acme')).toMatchObject({ generation: 3 });

    await rejection(authpipe.rotateTenantKey('org_nobody'), 'TENANT_NOT_FOUND');
    await rejection(authpipe.rotateTenantKey(42 as unknown as string), 'INVALID_ARGUMENT');
    await authpipe.close();
  });

  test('tenantKeyRotation is checked at construction', async () => {
    for (const [tenantKeyRotation, message] of [
      [{ maxEncryptions: 0 }, /maxEncryptions must be 1 to 4294967296/],
      [{ maxEncryptions: 2 ** 33 }, /maxEncryptions must be 1 to 4294967296/],
      [{ maxAgeDays: -1 }, /maxAgeDays must be 0/],
      [{ maxAgeDays: 1.5 }, /maxAgeDays must be an integer/],
    ] as const) {
      expect(() => new Authpipe({ store: testStore(), masterKey: newKey(), tenantKeyRotation })).toThrow(
        expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(message) }),
      );
    }
    const authpipe = new Authpipe({ store: testStore(), masterKey: newKey(), tenantKeyRotation: { maxAgeDays: 0, maxEncryptions: 1000 } });
    await authpipe.ready();
    await authpipe.close();
  });
});

describe('what is on disk', () => {
  const dir = tempDir();
  const store = join(dir, 'scan.db');
  const authpipe = open({ store, masterKey: newKey() });

  test('the store files contain none of the plaintext tokens, secrets or extras', async () => {
    const secrets: string[] = [];
    const inputs = Array.from({ length: 50 }, (_, i) => {
      const accessToken = i % 2 ? jwtLike(`s${i}`) : opaque();
      const refreshToken = opaque();
      const marker = `extra-marker-${opaque()}`;
      secrets.push(accessToken, refreshToken, marker);
      return { provider: 'hubspot', tenantId: `t${i % 5}`, userId: `u${i}`, accessToken, refreshToken, extras: { marker } };
    });
    await authpipe.importConnections(inputs);
    const webhook = `whsec_${opaque()}`;
    secrets.push(webhook);
    await authpipe.setSecret({ tenantId: 't0', name: 'webhook', value: webhook });

    const bytes = storeBytes(dir);
    expect(bytes.length).toBeGreaterThan(0);
    for (const secret of secrets) {
      expect(bytes.includes(Buffer.from(secret))).toBe(false);
      // A 16-byte window too, in case a value were stored split or re-encoded.
      expect(bytes.includes(Buffer.from(secret.slice(4, 20)))).toBe(false);
    }
    // The file is private to its owner.
    expect(statSync(store).mode & 0o077).toBe(0);
  });

  test('deleteTenant removes the tenant and nothing else', async () => {
    await authpipe.importConnection({ ...ref, tenantId: 'doomed', accessToken: 'doomed-token' });
    await authpipe.setSecret({ tenantId: 'doomed', name: 'webhook', value: 'whsec_doomed' });
    await authpipe.importConnection({ ...ref, tenantId: 'kept', accessToken: 'kept-token' });
    expect((await authpipe.getCredential({ ...ref, tenantId: 'doomed' })).credential).toBe('doomed-token');
    expect(await authpipe.deleteTenant('doomed')).toEqual({ connections: 1, secrets: 1, sessions: 0, flows: 0 });
    await rejection(authpipe.getCredential({ ...ref, tenantId: 'doomed' }), 'CONNECTION_NOT_FOUND');
    await rejection(authpipe.getSecret({ tenantId: 'doomed', name: 'webhook' }), 'SECRET_NOT_FOUND');
    expect((await authpipe.getCredential({ ...ref, tenantId: 'kept' })).credential).toBe('kept-token');
    // (That copies of its rows cannot be decrypted afterwards is tested in Rust: tests/vault_on_disk.rs.)
  });

  test('no secret appears in inspect() or JSON of returned objects and errors', async () => {
    const accessToken = `at_${opaque()}`;
    const refreshToken = `rt_${opaque()}`;
    const connection = await authpipe.importConnection({ ...ref, userId: 'inspect', accessToken, refreshToken });
    const listed = await authpipe.listConnections();
    const notFound = await authpipe.getCredential({ ...ref, userId: 'missing' }).catch((e: unknown) => e);
    const badType = await authpipe.importConnection({ ...ref, accessToken: 42 as never }).catch((e: unknown) => e);
    for (const value of [connection, listed, notFound, badType, authpipe, await authpipe.stats()]) {
      for (const text of [inspect(value, { depth: 10, showHidden: true }), JSON.stringify(value) ?? '']) {
        expect(text).not.toContain(accessToken);
        expect(text).not.toContain(refreshToken);
      }
    }
    const credential = await authpipe.getCredential({ ...ref, userId: 'inspect' });
    expect(JSON.stringify({ ...credential, credential: undefined })).not.toContain(accessToken);
  });
});

describe('development master key', () => {
  const dir = tempDir();
  const savedEnv = process.env.NODE_ENV;
  const savedKey = process.env.AUTHPIPE_MASTER_KEY;
  beforeAll(() => delete process.env.AUTHPIPE_MASTER_KEY);
  afterAll(() => {
    process.env.NODE_ENV = savedEnv;
    if (savedKey !== undefined) process.env.AUTHPIPE_MASTER_KEY = savedKey;
  });

  test('outside production a 0600 key file is generated beside the store, reused, and announced once', async () => {
    process.env.NODE_ENV = 'development';
    const store = join(dir, 'dev.db');
    const emitWarning = jest.spyOn(process, 'emitWarning').mockImplementation(() => {});
    let calls: unknown[][];
    try {
      const first = new Authpipe({ store });
      await first.importConnection({ ...ref, accessToken: 'dev-token' });
      await first.close();
      const second = new Authpipe({ store });
      expect((await second.getCredential(ref)).credential).toBe('dev-token');
      await second.close();
    } finally {
      calls = [...emitWarning.mock.calls];
      emitWarning.mockRestore(); // (this also forgets the calls)
    }
    expect(statSync(`${store}.key`).mode & 0o777).toBe(0o600);
    expect(calls).toHaveLength(1);
    const [message, options] = calls[0] as [string, unknown];
    expect(options).toEqual({ code: 'AUTHPIPE_DEV_KEY' });
    expect(message).toContain(`${store}.key`);
    expect(message).not.toContain(readFileSync(`${store}.key`, 'utf8').trim());
  });

  test('in production, no key means no start', async () => {
    process.env.NODE_ENV = 'production';
    const authpipe = new Authpipe({ store: join(dir, 'prod.db') });
    const err = await rejection(authpipe.ready(), 'INVALID_ARGUMENT');
    expect(err.message).toContain('masterKey is required in production');
    await authpipe.close();
  });

  test('AUTHPIPE_MASTER_KEY is used when no key is passed', async () => {
    process.env.NODE_ENV = 'production';
    process.env.AUTHPIPE_MASTER_KEY = newKey();
    const authpipe = new Authpipe({ store: testStore() });
    await authpipe.ready();
    await authpipe.close();
    delete process.env.AUTHPIPE_MASTER_KEY;
  });
});
