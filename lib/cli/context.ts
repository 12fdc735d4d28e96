/**
 * What every command starts from: the store, the master key(s) and the provider settings from
 * flags or the environment, and an {@link Authpipe} instance opened on them. The command line
 * never creates a store (a mistyped path would silently become a new, empty one) and never
 * falls back to a development key.
 * @internal
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { Authpipe } from '../index';
import { AuthpipeError, fromNative } from '../errors';
import { native } from '../native';
import type { AuthpipeOptions, MasterKeyConfig, ProviderConfig } from '../types';
import { stringFlag, usageError, type Parsed } from './args';
import { Output } from './output';

/** The library's default store, relative to the working directory. */
export const DEFAULT_STORE = '.authpipe/authpipe.db';

export interface KeyOptions {
  masterKey?: string;
  masterKeys?: MasterKeyConfig[];
}

/** One run of one command. */
export class Context {
  readonly out = new Output(process.stdout);
  readonly err = new Output(process.stderr);
  readonly json: boolean;
  /** Aborted by the first Ctrl-C: long commands stop starting work, finish what is under way. */
  readonly interrupt = new AbortController();
  #opened: Authpipe[] = [];

  constructor(
    readonly command: string,
    readonly args: Parsed,
  ) {
    this.json = args.values.json === true;
  }

  /** The store option: a postgres:// URL as given, or an SQLite path that exists. */
  store(): string {
    const given = stringFlag(this.args, 'store') ?? process.env.AUTHPIPE_STORE;
    const value = (given ?? DEFAULT_STORE).trim();
    if (value === ':memory:' || value === 'sqlite::memory:') {
      throw usageError('an in-memory store starts empty in every process: name the store your app uses', this.command);
    }
    if (/^postgres(ql)?:\/\//i.test(value)) return value;
    const path = value.startsWith('sqlite:') ? value.slice('sqlite:'.length) : value;
    const origin = given === undefined ? ' (the default; pass --store or set AUTHPIPE_STORE)' : '';
    if (!existsSync(path)) {
      throw new AuthpipeError('STORE_ERROR', `no store at ${path}${origin}: the authpipe CLI opens existing stores only, it does not create one`);
    }
    if (statSync(path).isDirectory()) throw new AuthpipeError('STORE_ERROR', `${path} is a directory, not a store file${origin}`);
    return value;
  }

  /** The master key(s): a keys file, a key file, or AUTHPIPE_MASTER_KEY, in that order. */
  keys(): KeyOptions {
    const keysFile = stringFlag(this.args, 'master-keys-file');
    const keyFile = stringFlag(this.args, 'master-key-file');
    if (keysFile !== undefined && keyFile !== undefined) {
      throw usageError('pass --master-key-file or --master-keys-file, not both', this.command);
    }
    if (keysFile !== undefined) {
      const keys = readJson(keysFile, '--master-keys-file');
      if (!Array.isArray(keys)) {
        throw new AuthpipeError('INVALID_ARGUMENT', `--master-keys-file ${keysFile} must hold a JSON array of { "id", "key", "retired"? }, the new key first`);
      }
      return { masterKeys: keys as MasterKeyConfig[] };
    }
    if (keyFile !== undefined) {
      const key = readText(keyFile, '--master-key-file').trim();
      if (key === '') throw new AuthpipeError('INVALID_ARGUMENT', `--master-key-file ${keyFile} is empty`);
      return { masterKey: key };
    }
    const fromEnv = process.env.AUTHPIPE_MASTER_KEY?.trim();
    if (fromEnv) return { masterKey: fromEnv };
    throw new AuthpipeError(
      'INVALID_ARGUMENT',
      'no master key: set AUTHPIPE_MASTER_KEY, or pass --master-key-file or --master-keys-file (the CLI never uses a development key)',
    );
  }

  /** The providers file's settings, if one is given. */
  providers(): Record<string, ProviderConfig> | undefined {
    const file = stringFlag(this.args, 'providers') ?? (process.env.AUTHPIPE_PROVIDERS || undefined);
    if (file === undefined) return undefined;
    const providers = readJson(file, '--providers');
    if (typeof providers !== 'object' || providers === null || Array.isArray(providers)) {
      throw new AuthpipeError('INVALID_ARGUMENT', `--providers ${file} must hold a JSON object of provider id -> settings`);
    }
    return providers as Record<string, ProviderConfig>;
  }

  /**
   * Opens the store and waits for it. The instance takes part like any app instance while the
   * command runs (a refresh it starts is stored before it exits), but never probes on a
   * schedule: health checks run only when `check` asks.
   */
  async open(extra: Pick<AuthpipeOptions, 'providers'> = { providers: this.providers() }): Promise<Authpipe> {
    const store = this.store();
    const options: AuthpipeOptions = { store, ...this.keys(), ...extra, healthCheckIntervalMs: 0, memoLimit: 0 };
    if (/^postgres(ql)?:\/\//i.test(store) && !(await native.storeExists(store).catch((err: unknown) => Promise.reject(fromNative(err))))) {
      // Opening would create the schema and its tables: a mistyped schema would become a new store.
      const schema = new URL(store).searchParams.get('schema') ?? 'authpipe';
      throw new AuthpipeError('STORE_ERROR', `no Authpipe store in schema '${schema}' of that PostgreSQL database: the authpipe CLI opens existing stores only, it does not create one`);
    }
    const authpipe = new Authpipe(options);
    this.#opened.push(authpipe);
    await authpipe.ready();
    return authpipe;
  }

  /** Closes what {@link open} opened (waiting for refreshes under way to be stored). */
  async close(): Promise<void> {
    await Promise.allSettled(this.#opened.splice(0).map((a) => a.close()));
  }
}

/** Warns of a key file others can read, as ssh does of a private key (POSIX modes only). */
function warnIfShared(file: string, flag: string): void {
  if (process.platform === 'win32') return;
  try {
    if ((statSync(file).mode & 0o077) !== 0) process.stderr.write(`authpipe: warning: ${flag} ${file} can be read by other users: chmod 600 it\n`);
  } catch {
    // Unreadable: readText says why.
  }
}

function readText(file: string, flag: string): string {
  if (flag.startsWith('--master-key')) warnIfShared(file, flag);
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : ((err as NodeJS.ErrnoException).code ?? 'unreadable');
    throw new AuthpipeError('INVALID_ARGUMENT', `cannot read ${flag} ${file}: ${reason}`);
  }
}

/** A JSON file's value. A parse error names the position, never the text: it may be a key. */
function readJson(file: string, flag: string): unknown {
  const text = readText(file, flag);
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new AuthpipeError('INVALID_ARGUMENT', `${flag} ${file} is not valid JSON${jsonPosition(err, text)}`);
  }
}

/** ` (line 3, column 7)` from a JSON.parse error, or nothing: its message quotes the input. */
export function jsonPosition(err: unknown, text: string): string {
  const match = /position (\d+)/.exec(err instanceof Error ? err.message : '');
  if (!match) return '';
  const before = text.slice(0, Number(match[1]));
  const line = before.split('\n').length;
  const column = before.length - before.lastIndexOf('\n');
  return text.includes('\n') ? ` (line ${line}, column ${column})` : ` (at column ${column})`;
}
