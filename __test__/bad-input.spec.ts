import { Authpipe, AuthpipeError, type AuthpipeErrorCode } from '..';
import { newKey, open, rejection, testStore } from './helpers';

const ok = { provider: 'attio', tenantId: 'org_acme', userId: 'user_1' };
const SECRET = 'tok_live_0123456789abcdefSECRET';
const HUGE = 'x'.repeat(10 * 1024 * 1024);

describe('bad input never crashes, never half-stores, never echoes a secret', () => {
  const authpipe = open({ store: testStore(), masterKey: newKey() });

  const cases: Array<[string, () => Promise<unknown>, AuthpipeErrorCode, RegExp]> = [
    ['null ref', () => authpipe.getCredential(null as never), 'INVALID_ARGUMENT', /connection must be an object/],
    ['number tenantId', () => authpipe.getCredential({ ...ok, tenantId: 42 as never }), 'INVALID_ARGUMENT', /tenantId must be a string/],
    ['missing userId', () => authpipe.getCredential({ provider: 'attio', tenantId: 't' } as never), 'INVALID_ARGUMENT', /userId must be a string/],
    ['empty tenantId', () => authpipe.getCredential({ ...ok, tenantId: '' }), 'INVALID_ARGUMENT', /tenantId must not be empty/],
    ['10 MB userId', () => authpipe.getCredential({ ...ok, userId: HUGE }), 'INVALID_ARGUMENT', /userId is 10485760 bytes long; the limit is 256/],
    ['NUL in userId', () => authpipe.getCredential({ ...ok, userId: 'a\0b' }), 'INVALID_ARGUMENT', /userId must not contain control characters/],
    ['lone surrogate', () => authpipe.getCredential({ ...ok, userId: 'a\uD800' }), 'INVALID_ARGUMENT', /userId is not well-formed Unicode/],
    ['unknown provider', () => authpipe.getCredential({ ...ok, provider: 'notacrm' }), 'UNKNOWN_PROVIDER', /unknown provider 'notacrm'; known providers: attio/],
    ['malformed provider', () => authpipe.getCredential({ ...ok, provider: 'Attio' }), 'INVALID_ARGUMENT', /provider must be lowercase/],
    ['unknown connection', () => authpipe.getCredential({ ...ok, userId: 'nobody' }), 'CONNECTION_NOT_FOUND', /no attio connection for tenant 'org_acme' and user 'nobody'/],
    ['no credential', () => authpipe.importConnection({ ...ok } as never), 'INVALID_ARGUMENT', /accessToken \(OAuth\) or apiKey is required/],
    ['both credentials', () => authpipe.importConnection({ ...ok, accessToken: SECRET, apiKey: SECRET } as never), 'INVALID_ARGUMENT', /either accessToken or apiKey/],
    ['empty token', () => authpipe.importConnection({ ...ok, accessToken: '' }), 'INVALID_ARGUMENT', /accessToken must not be empty/],
    ['10 MB token', () => authpipe.importConnection({ ...ok, accessToken: SECRET + HUGE }), 'INVALID_ARGUMENT', /accessToken is \d+ bytes long; the limit is 65536/],
    ['NUL in token', () => authpipe.importConnection({ ...ok, accessToken: `${SECRET}\0` }), 'INVALID_ARGUMENT', /accessToken must not contain control characters/],
    ['token as number', () => authpipe.importConnection({ ...ok, accessToken: 12345 as never }), 'INVALID_ARGUMENT', /accessToken must be a string/],
    ['bad expiresAt', () => authpipe.importConnection({ ...ok, accessToken: SECRET, expiresAt: new Date('nope') }), 'INVALID_ARGUMENT', /expiresAt must be a valid Date/],
    ['expiresAt in seconds', () => authpipe.importConnection({ ...ok, accessToken: SECRET, expiresAt: 1_700_000 }), 'INVALID_ARGUMENT', /expiresAt must be a date between the years 2000 and 9999/],
    ['scope with space', () => authpipe.importConnection({ ...ok, accessToken: SECRET, scopes: ['a b'] }), 'INVALID_ARGUMENT', /scopes\[0\] is not a scope token/],
    ['extras array', () => authpipe.importConnection({ ...ok, accessToken: SECRET, extras: [1] as never }), 'INVALID_ARGUMENT', /extras must be an object/],
    ['extras BigInt', () => authpipe.importConnection({ ...ok, accessToken: SECRET, extras: { n: 1n } }), 'INVALID_ARGUMENT', /extras must be JSON-serializable/],
    ['apiKey with expiry', () => authpipe.importConnection({ ...ok, apiKey: SECRET, expiresAt: Date.now() } as never), 'INVALID_ARGUMENT', /belong to OAuth connections/],
    ['secret without value', () => authpipe.setSecret({ tenantId: 't', name: 'n' } as never), 'INVALID_ARGUMENT', /value must be a string/],
    ['empty secret', () => authpipe.setSecret({ tenantId: 't', name: 'n', value: '' }), 'INVALID_ARGUMENT', /value must not be empty/],
    ['list limit', () => authpipe.listConnections({ limit: 1.5 }), 'INVALID_ARGUMENT', /limit must be an integer/],
    ['deleteTenant number', () => authpipe.deleteTenant(7 as never), 'INVALID_ARGUMENT', /tenantId must be a string/],
    ['not an array', () => authpipe.importConnections({} as never), 'INVALID_ARGUMENT', /takes an array/],
  ];

  test.each(cases)('%s', async (_name, call, code, message) => {
    const err = await rejection(call(), code);
    expect(err.message).toMatch(message);
    expect(err.message).not.toContain(SECRET);
    expect(err.message.length).toBeLessThan(500);
  });

  test('nothing is stored when one connection of a batch is bad', async () => {
    const batch = [
      { ...ok, userId: 'good-1', accessToken: SECRET },
      { ...ok, userId: 'good-2', accessToken: SECRET },
      { ...ok, userId: 'bad', accessToken: SECRET, scopes: ['has space'] },
    ];
    const err = await rejection(authpipe.importConnections(batch), 'INVALID_ARGUMENT');
    expect(err.message).toMatch(/^scopes\[0\]/);
    expect((await authpipe.listConnections()).connections).toHaveLength(0);
    await rejection(authpipe.getCredential({ ...ok, userId: 'good-1' }), 'CONNECTION_NOT_FOUND');
  });

  test('bad constructor options throw INVALID_ARGUMENT naming the option', () => {
    const bad: Array<[unknown, RegExp]> = [
      ['nope', /options must be an object/],
      [{ store: 42 }, /store must be a string/],
      [{ masterKey: 42 }, /masterKey must be a base64 or hex string/],
      [{ masterKey: newKey(), masterKeys: [] }, /masterKey or masterKeys, not both/],
      [{ masterKeys: 'k' }, /masterKeys must be an array/],
      [{ masterKeys: [{ key: newKey() }] }, /masterKeys\[0\]\.id must be a string/],
      [{ providers: { mycrm: 'x' } }, /providers\.mycrm must be an object/],
      [{ memoLimit: -1 }, /memoLimit must not be negative/],
    ];
    for (const [options, message] of bad) {
      let thrown: unknown;
      try {
        new Authpipe(options as never);
      } catch (e) {
        thrown = e;
      }
      expect(thrown).toBeInstanceOf(AuthpipeError);
      expect((thrown as AuthpipeError).code).toBe('INVALID_ARGUMENT');
      expect((thrown as AuthpipeError).message).toMatch(message);
    }
  });

  test('options checked by the core also throw from the constructor', () => {
    for (const [options, message] of [
      [{ store: 'postgres://app:hunter2@localhost/db?schema=Bad-Name', masterKey: newKey() }, /schema name must be/],
      [{ store: 'postgres://app:hunter2@[::1/db', masterKey: newKey() }, /not a valid postgres:\/\/ URL/],
      [{ store: testStore(), masterKeys: [{ id: 'bad id!', key: newKey() }] }, /id must be 1-64 characters/],
      [{ store: testStore(), masterKeys: [{ id: 'a', key: newKey() }, { id: 'a', key: newKey() }] }, /two keys with id 'a'/],
      [{ store: testStore(), masterKey: newKey(), providers: { 'Bad Id': {} } }, /provider must be lowercase/],
    ] as const) {
      expect(() => new Authpipe(options)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(message) }));
      expect(() => new Authpipe(options)).toThrow(expect.objectContaining({ message: expect.not.stringContaining('hunter2') }));
    }
  });

  test('a PostgreSQL store needs a configured master key (every instance must share it)', async () => {
    const authpipe = new Authpipe({ store: 'postgres://postgres@127.0.0.1:5432/test?schema=never_created' });
    const err = await rejection(authpipe.ready(), 'INVALID_ARGUMENT');
    expect(err.message).toMatch(/needs masterKey/);
    await authpipe.close();
  });

  test('a custom provider from the providers option is known', async () => {
    const custom = new Authpipe({
      store: testStore(),
      masterKey: newKey(),
      providers: { mycrm: { authorizeUrl: 'https://crm.example/authorize', tokenUrl: 'https://crm.example/token' } },
    });
    await custom.importConnection({ ...ok, provider: 'mycrm', apiKey: SECRET });
    expect((await custom.getCredential({ ...ok, provider: 'mycrm' })).credential).toBe(SECRET);
    await custom.close();
  });
});
