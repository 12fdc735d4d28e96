/**
 * The native handle behind an {@link Authpipe} instance, for the `authpipe` command line
 * (lib/cli/), whose diagnostics (`storeInfo`, `checkImports`) are internal calls of the
 * addon, not public methods. index.ts fills it in from inside the class, where the handle is.
 * @internal
 */
import type { Authpipe } from './index';
import type { NativeAuthpipe } from './native';

export const internals: { handle?: (authpipe: Authpipe) => Promise<NativeAuthpipe> } = {};

/** The instance's native handle, once its store is open (rejects as `ready()` does). */
export function nativeHandle(authpipe: Authpipe): Promise<NativeAuthpipe> {
  return internals.handle!(authpipe);
}
