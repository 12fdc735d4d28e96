import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Sandbox } from '../dist/testing';
import { Authpipe, AuthpipeError, type AuthpipeOptions, type AuthpipeErrorCode, type ConnectResultMessage } from '..';

/** The PostgreSQL database tests use (trust auth on loopback; see the README, Quick start). */
export const POSTGRES_URL = process.env.AUTHPIPE_TEST_POSTGRES ?? 'postgres://postgres@127.0.0.1:5432/test';

/** Which store the suites run on: `AUTHPIPE_TEST_STORE=postgres` runs them all on PostgreSQL. */
export const STORE_KIND: 'sqlite' | 'postgres' = process.env.AUTHPIPE_TEST_STORE === 'postgres' ? 'postgres' : 'sqlite';

const schemas: string[] = [];
afterAll(() => schemas.splice(0).forEach(dropSchema));

/**
 * A fresh, private store: in-memory SQLite, or a new PostgreSQL schema (dropped after the test
 * file) when the suites run on PostgreSQL.
 */
export function testStore(): string {
  if (STORE_KIND === 'sqlite') return ':memory:';
  return postgresStore();
}

/** A store URL with a new PostgreSQL schema, dropped after the test file. */
export function postgresStore(): string {
  const schema = `authpipe_jest_${randomBytes(6).toString('hex')}`;
  schemas.push(schema);
  return `${POSTGRES_URL}?schema=${schema}`;
}

/** Runs SQL on the test database with psql. */
export function psql(sql: string): string {
  return execFileSync('psql', ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', POSTGRES_URL, '-c', sql], {
    encoding: 'utf8',
    env: { ...process.env, PGOPTIONS: '-c client_min_messages=warning' },
  }).trim();
}

function dropSchema(schema: string): void {
  psql(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
}

/** A fresh base64 master key. */
export function newKey(): string {
  return randomBytes(32).toString('base64');
}

/** A temporary directory removed after the current test file. */
export function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'authpipe-test-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Instances opened through this are closed after the current test file. */
export function open(options: AuthpipeOptions): Authpipe {
  const authpipe = new Authpipe(options);
  afterAll(() => authpipe.close());
  return authpipe;
}

/** Asserts `promise` rejects with an AuthpipeError of `code`, and returns it. */
export async function rejection(promise: Promise<unknown>, code: AuthpipeErrorCode): Promise<AuthpipeError> {
  const err = await promise.then(
    () => {
      throw new Error(`expected ${code}, but it resolved`);
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(AuthpipeError);
  expect((err as AuthpipeError).code).toBe(code);
  return err as AuthpipeError;
}

/** A realistic 1.2 KB JWT-like token. */
export function jwtLike(seed: string): string {
  const part = (n: number) => Buffer.from(randomBytes(n)).toString('base64url');
  return `eyJhbGciOiJSUzI1NiJ9.${part(700)}.${part(256)}`.slice(0, 1200 - seed.length) + seed;
}

/** A realistic 40-byte opaque token, like Attio's. */
export function opaque(): string {
  return randomBytes(30).toString('base64url');
}

/** Starts `server` on a free loopback port; returns its origin (`http://127.0.0.1:<port>`). */
export async function listenOnLoopback(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** Stops `server`, its open keep-alive connections too. */
export async function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

/**
 * An instance on a test store whose `attio` is the sandbox, calling back to the handler mounted
 * at `/authpipe` on `appOrigin`; no background health checks.
 */
export function authpipeOnSandbox(sandbox: Sandbox, appOrigin: string): Authpipe {
  return new Authpipe({
    store: testStore(),
    masterKey: newKey(),
    healthCheckIntervalMs: 0,
    providers: { attio: sandbox.providerConfig({ redirectUri: `${appOrigin}/authpipe/callback/attio` }) },
  });
}

/** A browser's request without the browser: no redirects followed, the cookie given by hand. */
export async function browse(url: string, cookie?: string): Promise<{ status: number; location: string | null; setCookie: string[]; text: string; headers: Headers }> {
  const res = await fetch(url, { redirect: 'manual', headers: cookie ? { cookie } : {} });
  return { status: res.status, location: res.headers.get('location'), setCookie: res.headers.getSetCookie(), text: await res.text(), headers: res.headers };
}

/** How the user consents at the provider: from its authorize URL to the app's callback URL. */
export type Consent = (authorizeUrl: URL) => Promise<string>;

/**
 * A browser without JavaScript through the connect flow: the app's connect route (a link, or a
 * form POST of the session and `form`'s fields, as a page's button sends), the provider's
 * consent, then the callback page, whose result `posted()` and `redirectedTo()` read.
 */
export async function connectWithoutJavaScript(appOrigin: string, provider: string, session: string, consent: Consent, form?: Record<string, string>): Promise<{ status: number; html: string }> {
  const connectUrl = `${appOrigin}/authpipe/connect/${provider}`;
  const start = form
    ? await fetch(connectUrl, { method: 'POST', body: new URLSearchParams({ session, ...form }), redirect: 'manual' })
    : await fetch(`${connectUrl}?session=${encodeURIComponent(session)}`, { redirect: 'manual' });
  if (start.status !== 302) throw new Error(`connect answered ${start.status}: ${await start.text()}`);
  const cookies = start.headers.getSetCookie().map((cookie) => cookie.split(';')[0]).join('; ');
  const callback = await consent(new URL(start.headers.get('location')!));
  if (!callback.startsWith(`${appOrigin}/authpipe/callback`)) throw new Error(`consent sent the browser to ${callback}`);
  const page = await browse(callback, cookies);
  return { status: page.status, html: page.text };
}

/** The result a handler page posts to its opener. */
export function posted(page: string): ConnectResultMessage {
  const match = /var result = (\{.*?\});\n/s.exec(page);
  if (!match) throw new Error(`no result in page: ${page}`);
  return JSON.parse(match[1]!) as ConnectResultMessage;
}

/** Where a handler page sends a browser that has no opener (the `returnTo` redirect). */
export function redirectedTo(page: string): URL {
  const match = /window\.location\.replace\(("[^"]*")\)/.exec(page);
  if (!match) throw new Error(`no redirect in page: ${page}`);
  return new URL(JSON.parse(match[1]!) as string);
}
