import type { ConnectErrorCode } from './protocol.js';

/**
 * Why a connect attempt failed: what `onError` receives and `connect()` rejects with. `code` is
 * stable (branch on it). `message` is the handler's words for the code, fit to show the user, never
 * a provider's text or a secret; when `getSessionToken` failed it includes that error's message.
 *
 * @example
 * onError={(error) => { if (error.code === 'AUTHORIZATION_DENIED') showToast('Connection declined') }}
 */
export class ConnectError extends Error {
  override readonly name = 'ConnectError';

  constructor(
    readonly code: ConnectErrorCode,
    message: string,
  ) {
    super(message);
  }
}
