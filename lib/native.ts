/**
 * Loads the native addon through the generated napi loader (`binding.js`, built by
 * `napi build --platform`, typed by its generated `binding.d.ts`), and turns its failure into one
 * error that names the platform and the package to install, instead of a chain of require errors.
 * Internal: the public API is `Authpipe` in index.ts.
 * @internal
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type * as Binding from '../binding';
import { SUPPORTED_PLATFORMS, currentPlatform } from './platform';

/** Raised when the addon cannot load; `code` is `UNSUPPORTED_PLATFORM` or `NATIVE_LOAD_FAILED`. */
function loadError(code: 'UNSUPPORTED_PLATFORM' | 'NATIVE_LOAD_FAILED', message: string, cause: unknown): Error {
  return Object.assign(new Error(message, { cause }), { name: 'AuthpipeLoadError', code });
}

function packageInstalled(name: string): boolean {
  try {
    require.resolve(`${name}/package.json`);
    return true;
  } catch {
    return false;
  }
}

function load(): typeof Binding {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('../binding.js');
  } catch (cause) {
    const platform = currentPlatform();
    const pkg = `@authpipe/node-${platform}`;
    if (!(SUPPORTED_PLATFORMS as readonly string[]).includes(platform)) {
      throw loadError(
        'UNSUPPORTED_PLATFORM',
        `@authpipe/node has no binary for ${platform} (Node ${process.version}). Binaries exist for ${SUPPORTED_PLATFORMS.join(', ')}; ` +
          'On another platform, build the addon from source with a Rust toolchain and set NAPI_RS_NATIVE_LIBRARY_PATH to the .node file (README, Install).',
        cause,
      );
    }
    const local = join(__dirname, '..', `authpipe.${platform}.node`);
    if (!existsSync(local) && !packageInstalled(pkg)) {
      throw loadError(
        'UNSUPPORTED_PLATFORM',
        `@authpipe/node needs its binary for ${platform}, the package ${pkg}, which is not installed. ` +
          `It is an optional dependency: install without --omit=optional / --no-optional, or run \`npm install ${pkg}\`. ` +
          'A lockfile written on another platform can leave it out (npm/cli#4828): delete node_modules and package-lock.json, then install again.',
        cause,
      );
    }
    // The binary is there but did not load (a libc too old, a damaged file): say why, from the
    // binary itself rather than from the loader's summary.
    const binary = existsSync(local) ? local : pkg;
    let reason: unknown;
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      require(binary);
      reason = new Error(`the binary loads, but the generated loader refused it: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    } catch (err) {
      reason = err;
    }
    throw loadError(
      'NATIVE_LOAD_FAILED',
      `@authpipe/node could not load its binary for ${platform} (${binary}) in Node ${process.version}: ${reason instanceof Error ? reason.message : String(reason)}`,
      reason,
    );
  }
}

export const native: typeof Binding = load();
export type NativeAuthpipe = Binding.NativeAuthpipe;
export type CredentialOutput = Binding.CredentialOutput;
export type ConnectionOutput = Binding.ConnectionOutput;
export type EventOutput = Binding.EventOutput;
export type WebhookInput = Binding.WebhookInput;
export type HealthOutput = Binding.HealthOutput;
