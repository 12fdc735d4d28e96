/**
 * The generated table of hostile input: one argument schema per public call, and every case
 * made from it by substituting each hostile value (./values.ts) into each argument and field.
 * The spec checks that every public call has a schema here; ./child.ts runs the cases.
 */
import type { Authpipe, AuthpipeErrorCode } from '../../..';
import type { Sandbox } from '../../../dist/testing';
import { HOSTILE_VALUES, type Hostile, type Node, type Oracle, type Placement } from './values';

export const TENANT = 'org_acme';
export const USER = 'user_1';
export const PROVIDER = 'attio';
export const REDIRECT_URI = 'https://app.example/authpipe/callback/attio';

/** What a call runs against. */
export interface Context {
  authpipe: Authpipe;
  sandbox: Sandbox;
  masterKey: string;
}

export interface CallSchema {
  /** The public call: a method name, `new Authpipe`, `createSandbox`. */
  call: string;
  /** Its arguments, in order, as nodes with valid values. */
  args: (ctx: Context) => Node[];
  run(ctx: Context, args: unknown[]): unknown;
  /** Codes a rejection may carry (wrong JS types must be INVALID_ARGUMENT whatever this says). */
  codes?: readonly AuthpipeErrorCode[];
  /** Whether a success may change the store (the runner then restores the valid setup). */
  mutates?: boolean;
}

const id = (valid: string, optional = false): Node => ({ type: 'id', valid, optional });
const str = (valid: string | undefined, optional = false): Node => ({ type: 'string', valid, optional });
const int = (valid: number): Node => ({ type: 'integer', valid, optional: true });
const obj = (fields: Record<string, Node>, optional = false): Node => ({ type: 'object', fields, optional, valid: validOf({ type: 'object', fields }) });
const fn = (): Node => ({ type: 'function', valid: () => {} });
const arr = (element: Node, optional = true): Node => ({ type: 'array', element, optional, valid: [element.valid] });

/** The valid value of a node, built from its fields'. */
export function validOf(node: Node): unknown {
  if (node.type === 'object' && node.fields) {
    const out: Record<string, unknown> = {};
    for (const [k, f] of Object.entries(node.fields)) if (f.valid !== undefined) out[k] = validOf(f);
    return out;
  }
  if (node.type === 'array' && node.element) return [validOf(node.element)];
  return node.valid;
}

export const refNode = (userId = USER) => obj({ provider: id(PROVIDER), tenantId: id(TENANT), userId: id(userId) });

/** The connection the valid setup imports, and the import calls' valid argument. */
export const importNode = (): Node =>
  obj({
    provider: id(PROVIDER),
    tenantId: id(TENANT),
    userId: id(USER),
    accessToken: str('tok_access_A', true),
    refreshToken: str('tok_refresh_A', true),
    expiresAt: { type: 'timestamp', valid: Date.UTC(2099, 0, 1), optional: true },
    apiKey: str(undefined, true),
    scopes: arr(str('record_permission:read')),
    extras: { type: 'json', valid: { plan: 'pro' }, optional: true },
  });

export const SECRETS = [
  { tenantId: TENANT, provider: PROVIDER, name: 'api', value: 'secret_value_A' },
  { tenantId: TENANT, name: 'webhook', value: 'whsec_B' },
] as const;

const REF_CODES: readonly AuthpipeErrorCode[] = ['INVALID_ARGUMENT', 'UNKNOWN_PROVIDER', 'CONNECTION_NOT_FOUND'];
const handlerOptions = (): Node =>
  obj({
    appOrigin: str('https://app.example'),
    basePath: str('/authpipe', true),
    returnTo: str('https://app.example/done', true),
    resolveUser: { type: 'function', valid: () => null, optional: true },
  });
/** The constructor's options: with `masterKey`, or with a `masterKeys` list. */
function options(ctx: Context, keys: 'masterKey' | 'masterKeys'): Node {
  const masterKeyList = arr(obj({ id: id('primary'), key: { type: 'key', valid: ctx.masterKey }, retired: { type: 'boolean', valid: false, optional: true } }));
  const keyFields: Record<string, Node> =
    keys === 'masterKey'
      ? { masterKey: { type: 'key', valid: ctx.masterKey, optional: true, nullRefused: true }, masterKeys: { type: 'array', optional: true, nullRefused: true } }
      : { masterKeys: { ...masterKeyList, nullRefused: true } };
  const attio: Node = { type: 'json', valid: { clientId: 'cid', clientSecret: 'csecret', redirectUri: REDIRECT_URI }, optional: true, entry: true };
  const fields = {
    store: str(':memory:', true),
    ...keyFields,
    providers: obj({ attio }, true),
    memoLimit: int(1000),
    httpTimeoutMs: int(5000),
    providerConcurrency: int(4),
    healthCheckIntervalMs: int(0),
    logger: obj(Object.fromEntries(['trace', 'debug', 'info', 'warn', 'error'].map((level) => [level, fn()])), true),
    meterProvider: obj({ getMeter: { type: 'function', valid: () => NOOP_METER } }, true),
  };
  return obj(fields, true);
}

async function openAndClose(opts: unknown): Promise<void> {
  const { Authpipe } = require('../../..') as typeof import('../../..');
  const authpipe = new Authpipe(opts as never);
  try {
    await authpipe.ready();
  } finally {
    await authpipe.close();
  }
}

/** A meter that creates instruments doing nothing: the `meterProvider` option's valid value. */
const NOOP_METER = {
  createHistogram: () => ({ record() {} }),
  createObservableCounter: () => ({}),
  createObservableGauge: () => ({}),
  addBatchObservableCallback() {},
  removeBatchObservableCallback() {},
};

type Method = (...args: unknown[]) => unknown;
const method = (name: string) => (ctx: Context, args: unknown[]) => (ctx.authpipe[name as keyof Authpipe] as Method).apply(ctx.authpipe, args);

export const SCHEMAS: readonly CallSchema[] = [
  { call: 'ready', args: () => [], run: method('ready') },
  { call: 'getCredential', args: () => [refNode()], run: method('getCredential'), codes: REF_CODES },
  { call: 'importConnection', args: () => [importNode()], run: method('importConnection'), mutates: true },
  { call: 'importConnections', args: () => [arr(importNode(), false)], run: method('importConnections'), mutates: true },
  { call: 'getConnection', args: () => [refNode()], run: method('getConnection'), codes: REF_CODES },
  {
    call: 'listConnections',
    args: () => [obj({ tenantId: id(TENANT, true), provider: id(PROVIDER, true), status: str('active', true), limit: int(10), cursor: str(undefined, true) }, true)],
    run: method('listConnections'),
  },
  { call: 'deleteConnection', args: () => [refNode('user_absent')], run: method('deleteConnection'), codes: REF_CODES, mutates: true },
  {
    call: 'startConnect',
    args: () => [obj({ provider: id(PROVIDER), tenantId: id(TENANT), userId: id(USER), scopes: arr(str('record_permission:read')), redirectUri: str(REDIRECT_URI, true) })],
    run: method('startConnect'),
    codes: ['INVALID_ARGUMENT', 'UNKNOWN_PROVIDER'],
  },
  ...(['url', 'query', 'body'] as const).map(
    (form): CallSchema => ({
      call: `handleCallback (${form})`,
      args: () => [
        obj({
          [form]:
            form === 'url'
              ? str('/authpipe/callback/attio?state=no_such_state_0123456789&code=c0de')
              : obj({ state: { ...str('no_such_state_0123456789', true), entry: true }, code: { ...str('c0de', true), entry: true } }),
        }),
        obj({ provider: id(PROVIDER, true), browserBinding: str('binding_0123456789', true) }, true),
      ],
      run: method('handleCallback'),
      codes: ['INVALID_ARGUMENT', 'INVALID_STATE', 'UNKNOWN_PROVIDER', 'STATE_PROVIDER_MISMATCH', 'AUTHORIZATION_DENIED'],
    }),
  ),
  {
    call: 'createConnectSession',
    args: () => [obj({ tenantId: id(TENANT), userId: id(USER), providers: arr(id(PROVIDER)), ttlSeconds: int(600) })],
    run: method('createConnectSession'),
    codes: ['INVALID_ARGUMENT', 'UNKNOWN_PROVIDER'],
  },
  { call: 'handler', args: () => [handlerOptions()], run: method('handler') },
  { call: 'fetchHandler', args: () => [handlerOptions()], run: method('fetchHandler') },
  {
    call: 'setSecret',
    args: () => [obj({ tenantId: id(TENANT), provider: id(PROVIDER, true), name: id('api'), value: str('secret_value_A') })],
    run: method('setSecret'),
    codes: ['INVALID_ARGUMENT', 'UNKNOWN_PROVIDER'],
    mutates: true,
  },
  {
    call: 'getSecret',
    args: () => [obj({ tenantId: id(TENANT), provider: id(PROVIDER, true), name: id('api') })],
    run: method('getSecret'),
    codes: ['INVALID_ARGUMENT', 'UNKNOWN_PROVIDER', 'SECRET_NOT_FOUND'],
  },
  {
    call: 'deleteSecret',
    args: () => [obj({ tenantId: id(TENANT), provider: id(PROVIDER, true), name: id('absent') })],
    run: method('deleteSecret'),
    codes: ['INVALID_ARGUMENT', 'UNKNOWN_PROVIDER'],
    mutates: true,
  },
  {
    call: 'verifyWebhook',
    args: () => [
      obj({
        provider: id(PROVIDER),
        tenantId: id(TENANT, true),
        name: id('webhook', true),
        headers: { type: 'json', valid: { 'attio-signature': '00'.repeat(32) } },
        body: { type: 'bytes', valid: '{"events":[]}' },
        method: str('POST', true),
        url: str('https://app.example/webhooks/attio', true),
      }),
    ],
    run: method('verifyWebhook'),
    codes: ['INVALID_ARGUMENT', 'UNKNOWN_PROVIDER', 'WEBHOOK_UNSUPPORTED', 'WEBHOOK_SECRET_MISSING', 'WEBHOOK_SIGNATURE_MISSING', 'WEBHOOK_SIGNATURE_MALFORMED', 'WEBHOOK_SIGNATURE_MISMATCH'],
  },
  { call: 'rotateMasterKey', args: () => [], run: method('rotateMasterKey'), mutates: true },
  { call: 'retireMasterKey', args: () => [id('primary')], run: method('retireMasterKey'), codes: ['INVALID_ARGUMENT', 'KEY_IN_USE'], mutates: true },
  { call: 'deleteTenant', args: () => [id('tenant_absent')], run: method('deleteTenant'), mutates: true },
  { call: 'rotateTenantKey', args: () => [id('tenant_absent')], run: method('rotateTenantKey'), codes: ['INVALID_ARGUMENT', 'TENANT_NOT_FOUND'], mutates: true },
  { call: 'refreshConnection', args: () => [refNode('user_2')], run: method('refreshConnection'), codes: REF_CODES, mutates: true },
  { call: 'checkConnection', args: () => [refNode('user_2')], run: method('checkConnection'), codes: REF_CODES, mutates: true },
  { call: 'health', args: () => [], run: method('health') },
  { call: 'metrics', args: () => [], run: method('metrics') },
  { call: 'stats', args: () => [], run: method('stats') },
  ...(['masterKey', 'masterKeys'] as const).map(
    (keys): CallSchema => ({
      call: `new Authpipe (${keys})`,
      args: (ctx) => [options(ctx, keys)],
      run: (_ctx, [opts]) => openAndClose(opts),
      // Without `store`, instances share the default file in the working directory, which the
      // first one wrote with its key (or a development key).
      codes: ['INVALID_ARGUMENT', 'UNKNOWN_PROVIDER', 'VAULT_KEY_MISMATCH', 'STORE_ERROR'],
    }),
  ),
  {
    call: 'createSandbox',
    args: () => [
      obj({
        provider: str('attio'),
        accessTokenTtl: int(1800),
        rotateRefreshTokens: { type: 'boolean', valid: false, optional: true },
        clientId: str('cid', true),
        clientSecret: str('csecret', true),
        scopes: arr(str('record_permission:read')),
        workspace: obj({ id: str('ws_1', true), name: str('Acme', true), slug: str('acme', true) }, true),
        consentPage: { type: 'boolean', valid: false, optional: true },
      }),
    ],
    run: async (_ctx, [opts]) => {
      const { createSandbox } = require('../../../dist/testing') as typeof import('../../../dist/testing');
      await (await createSandbox(opts as never)).close();
    },
  },
];

/**
 * Public calls the table leaves to other tests, and why. Anything public that is in neither
 * list fails the spec.
 */
export const NOT_IN_TABLE: Readonly<Record<string, string>> = {
  close: 'takes no arguments; closing in the middle of every kind of call is the concurrent-close test',
  constructor: "the class itself: 'new Authpipe' is in the table",
  AuthpipeError: 'an Error subclass callers may construct themselves; it checks nothing',
  ERROR_CODES: 'a frozen list, not a call',
  isWebhookRejection: 'a predicate on any value (it reads only instanceof and code); it rejects nothing',
  PROMETHEUS_CONTENT_TYPE: 'a constant string, not a call',
};

/** Where a hostile value goes: argument index, then field names and array indexes. */
export type Path = ReadonlyArray<string | number>;

export interface Case {
  /** Stable, readable: `setSecret arg0.tenantId <- getter that throws`. */
  name: string;
  call: string;
  path: Path;
  node: Node;
  hostile: Hostile;
  oracle: Oracle;
}

function* slots(node: Node, path: Path, inObject: boolean): Generator<{ path: Path; node: Node; inObject: boolean }> {
  yield { path, node, inObject };
  if (node.type === 'object') for (const [k, f] of Object.entries(node.fields ?? {})) yield* slots(f, [...path, k], true);
  if (node.type === 'array' && node.element) yield* slots(node.element, [...path, 0], false);
}

/** Every case of one call: each hostile value that applies, in each argument and field. */
export function casesOf(schema: CallSchema, ctx: Context): Case[] {
  const out: Case[] = [];
  schema.args(ctx).forEach((arg, i) => {
    for (const { path, node, inObject } of slots(arg, [i], false)) {
      for (const hostile of HOSTILE_VALUES) {
        if (hostile.fieldOnly && !inObject) continue;
        if (hostile.only && !hostile.only.includes(node.type)) continue;
        out.push({ name: `${schema.call} ${pathName(path)} <- ${hostile.name}`, call: schema.call, path, node, hostile, oracle: hostile.oracle(node, inObject) });
      }
    }
  });
  return out;
}

export function pathName(path: Path): string {
  return path.map((p, i) => (i === 0 ? `arg${p}` : typeof p === 'number' ? `[${p}]` : `.${p}`)).join('');
}

/** A placement at a path, for the runner: what to substitute, and what to pollute meanwhile. */
export interface Built {
  args: unknown[];
  /** Object.prototype[key] = value during the call. */
  pollute?: { key: string; value: unknown };
}

/** The call's arguments with `placement` at `path` (none: the valid arguments). */
export function build(schema: CallSchema, ctx: Context, path?: Path, placement?: Placement): Built {
  const built: Built = { args: [] };
  const nodes = schema.args(ctx);
  nodes.forEach((node, i) => {
    const here = path !== undefined && path[0] === i ? path.slice(1) : undefined;
    if (here !== undefined && here.length === 0) {
      if (placement && 'value' in placement) built.args[i] = placement.value;
      return;
    }
    built.args[i] = make(node, here, placement, built);
  });
  return built;
}

function make(node: Node, rest: Path | undefined, placement: Placement | undefined, built: Built): unknown {
  if (node.type === 'object' && node.fields) {
    const out: Record<string, unknown> = {};
    for (const [k, f] of Object.entries(node.fields)) {
      const deeper = rest !== undefined && rest[0] === k ? rest.slice(1) : undefined;
      if (deeper !== undefined && deeper.length === 0 && placement) place(out, k, validOf(f), placement, built);
      else {
        const value = make(f, deeper, placement, built);
        if (value !== undefined || deeper !== undefined) out[k] = value;
      }
    }
    return out;
  }
  if (node.type === 'array' && node.element) {
    const deeper = rest !== undefined && rest[0] === 0 ? rest.slice(1) : undefined;
    if (deeper !== undefined && deeper.length === 0 && placement) return 'value' in placement ? [placement.value] : [];
    return [make(node.element, deeper, placement, built)];
  }
  return validOf(node);
}

function place(parent: Record<string, unknown>, key: string, valid: unknown, placement: Placement, built: Built): void {
  if ('value' in placement) parent[key] = placement.value;
  else if ('getter' in placement) Object.defineProperty(parent, key, { get: placement.getter, enumerable: true });
  else if ('pollute' in placement) built.pollute = { key, value: placement.pollute };
  else if ('prototypeValue' in placement) Object.setPrototypeOf(parent, { [key]: valid });
}
