import type { ConnectErrorCode } from './protocol.js';

/**
 * Why a connect attempt failed: what `onError` receives and `connect()` rejects with. `code` is
 * stable (branch on it); `message` is fit to show the user and never holds a provider's text or
 * a secret.
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
