import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Authpipe, AuthpipeError, type AuthpipeOptions, type AuthpipeErrorCode } from '..';

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
