/**
 * The generated napi loader (`binding.js`, built by `napi build --platform`), typed by its
 * generated `binding.d.ts`. Internal: the public API is `Authpipe` in index.ts.
 * @internal
 */
import type * as Binding from '../binding';

// eslint-disable-next-line @typescript-eslint/no-require-imports
export const native: typeof Binding = require('../binding.js');
export type NativeAuthpipe = Binding.NativeAuthpipe;
export type CredentialOutput = Binding.CredentialOutput;
export type ConnectionOutput = Binding.ConnectionOutput;
export type EventOutput = Binding.EventOutput;
