/**
 * The options of `new Authpipe()`, checked for their JS types and turned into what the native
 * engine opens with (what values mean, ranges and defaults, is the core's to say), plus what
 * stays in JS: the memo's size and the telemetry sinks.
 * @internal
 */
import * as args from './args';
import { invalidArgument } from './errors';
import { telemetryOptions, type TelemetryOptions } from './telemetry/attach';
import type { AuthpipeOptions } from './types';

const DEFAULT_MEMO_LIMIT = 100_000;
const OPTION_FIELDS = [
  'store',
  'masterKey',
  'masterKeys',
  'providers',
  'memoLimit',
  'httpTimeoutMs',
  'providerConcurrency',
  'healthCheckIntervalMs',
  'tenantKeyRotation',
  'logger',
  'meterProvider',
] as const;
const ROTATION_FIELDS = ['maxAgeDays', 'maxEncryptions'] as const;

/** The checked options: the native engine's part, and lib's. */
export interface ParsedOptions {
  openInput: {
    store: string | undefined;
    masterKeys: Array<{ id?: string; key: string; retired?: boolean }> | undefined;
    production: boolean;
    providers: string;
    httpTimeoutMs: number | undefined;
    providerConcurrency: number | undefined;
    healthCheckIntervalMs: number | undefined;
    tenantKeyMaxAgeDays: number | undefined;
    tenantKeyMaxEncryptions: number | undefined;
  };
  memoLimit: number;
  telemetry: TelemetryOptions;
}

/** @throws {AuthpipeError} `INVALID_ARGUMENT` naming the bad option. */
export function parseOptions(options: AuthpipeOptions): ParsedOptions {
  const opts = args.fields(options, 'options', OPTION_FIELDS);
  const store = args.optionalString(opts.store, 'store');
  const masterKeys = resolveMasterKeys(opts);
  const providers = opts.providers === undefined || opts.providers === null ? {} : args.object(opts.providers, 'providers');
  for (const [id, config] of args.entries(providers, 'providers')) args.object(config, `providers.${id}`);
  const memoLimit = args.optionalInteger(opts.memoLimit, 'memoLimit') ?? DEFAULT_MEMO_LIMIT;
  if (memoLimit < 0) throw invalidArgument('memoLimit must not be negative');
  // Integers here; what they may be (ranges, defaults) is the core's to say.
  const httpTimeoutMs = args.optionalInteger(opts.httpTimeoutMs, 'httpTimeoutMs');
  const providerConcurrency = args.optionalInteger(opts.providerConcurrency, 'providerConcurrency');
  const healthCheckIntervalMs = args.optionalInteger(opts.healthCheckIntervalMs, 'healthCheckIntervalMs');
  const rotation: Partial<Record<(typeof ROTATION_FIELDS)[number], unknown>> =
    opts.tenantKeyRotation === undefined || opts.tenantKeyRotation === null
      ? {}
      : args.fields(opts.tenantKeyRotation, 'tenantKeyRotation', ROTATION_FIELDS, 'tenantKeyRotation.');
  const tenantKeyMaxAgeDays = args.optionalInteger(rotation.maxAgeDays, 'tenantKeyRotation.maxAgeDays');
  const tenantKeyMaxEncryptions = args.optionalInteger(rotation.maxEncryptions, 'tenantKeyRotation.maxEncryptions');
  const openInput = {
    store,
    masterKeys,
    production: process.env.NODE_ENV === 'production',
    providers: args.optionalJsonObject(providers, 'providers') ?? '{}',
    httpTimeoutMs,
    providerConcurrency,
    healthCheckIntervalMs,
    tenantKeyMaxAgeDays,
    tenantKeyMaxEncryptions,
  };
  return { openInput, memoLimit, telemetry: telemetryOptions(opts) };
}

function resolveMasterKeys(opts: Record<string, unknown>): Array<{ id?: string; key: string; retired?: boolean }> | undefined {
  if (opts.masterKey !== undefined && opts.masterKeys !== undefined) {
    throw invalidArgument('pass masterKey or masterKeys, not both');
  }
  if (opts.masterKeys !== undefined) {
    return args.list(opts.masterKeys, 'masterKeys', 'an array of { id, key }').map((entry: unknown, i) => {
      const e = args.fields(entry, `masterKeys[${i}]`, ['id', 'key', 'retired'], `masterKeys[${i}].`);
      return {
        id: args.string(e.id, `masterKeys[${i}].id`),
        key: args.keyMaterial(e.key, `masterKeys[${i}].key`),
        retired: args.optionalBoolean(e.retired, `masterKeys[${i}].retired`),
      };
    });
  }
  // `id` and `retired` named even when absent: napi would read a missing one from Object.prototype.
  if (opts.masterKey !== undefined) return [{ id: undefined, key: args.keyMaterial(opts.masterKey, 'masterKey'), retired: undefined }];
  const fromEnv = process.env.AUTHPIPE_MASTER_KEY;
  if (fromEnv) return [{ id: undefined, key: fromEnv, retired: undefined }];
  return undefined;
}
