// Runs the real `authpipe` binary (dist/cli/main.js) in a child process, and makes the stores
// the CLI specs run it against: an SQLite file, and a PostgreSQL schema of its own (dropped
// after the spec file), in the same run.
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Authpipe, type AuthpipeOptions, type ImportConnectionInput } from '../..';
import { newKey, postgresStore, tempDir } from '../helpers';

export const CLI = join(__dirname, '..', '..', 'dist', 'cli', 'main.js');

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Environment of a CLI run: nothing of the test process's AUTHPIPE_* settings leaks in. */
function childEnv(env: Record<string, string | undefined>): NodeJS.ProcessEnv {
  const base = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('AUTHPIPE_') && name !== 'NO_COLOR'));
  return { ...base, ...env };
}

/** Runs `authpipe ...args`; `input` is written to its stdin (a pipe, so never a terminal). */
export function authpipe(args: readonly string[], env: Record<string, string | undefined> = {}, input = ''): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: childEnv(env), stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(input);
  });
}

export type StoreKind = 'sqlite' | 'postgres';
export const STORE_KINDS: readonly StoreKind[] = ['sqlite', 'postgres'];

/** A new, empty store location of `kind`: a file path in a temporary directory, or a PG schema. */
export function newStore(kind: StoreKind, dir: string, name: string): string {
  return kind === 'sqlite' ? join(dir, `${name}.db`) : postgresStore();
}

/** A store of `kind` created with `connections` in it, and the key that opens it. */
export async function seededStore(
  kind: StoreKind,
  dir: string,
  name: string,
  connections: readonly ImportConnectionInput[],
  options: Partial<AuthpipeOptions> = {},
): Promise<{ store: string; key: string; keyFile: string }> {
  const store = newStore(kind, dir, name);
  const key = newKey();
  const keys = options.masterKeys ? {} : { masterKey: key };
  const instance = new Authpipe({ store, ...keys, healthCheckIntervalMs: 0, ...options });
  try {
    if (connections.length > 0) await instance.importConnections(connections);
    else await instance.ready();
  } finally {
    await instance.close();
  }
  const keyFile = join(dir, `${name}.key`);
  writeFileSync(keyFile, `${key}\n`, { mode: 0o600 });
  return { store, key, keyFile };
}

/** A temporary directory for the spec file. */
export function workDir(): string {
  return tempDir();
}

/** Parses a run's stdout as one JSON document. */
export function json<T = Record<string, unknown>>(run: Run): T {
  try {
    return JSON.parse(run.stdout) as T;
  } catch {
    throw new Error(`stdout is not one JSON document (exit ${run.code}):\n${run.stdout}\nstderr:\n${run.stderr}`);
  }
}
