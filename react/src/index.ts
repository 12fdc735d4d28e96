'use client';
/**
 * @authpipe/react: the browser side of @authpipe/node's connect flow.
 *
 * - {@link ConnectButton}: `<ConnectButton provider="attio" onSuccess={(c) => ...} />`
 * - {@link useConnect}: the same, for apps that draw their own button.
 *
 * Both talk to `authpipe.handler()` (mounted at `/authpipe` by default) and never see a token:
 * the connection they report is metadata from the handler's callback page.
 */
export { ConnectButton, type ConnectButtonProps } from './ConnectButton.js';
export { useConnect, type ConnectStatus, type UseConnectOptions, type UseConnectResult } from './useConnect.js';
export { ConnectError } from './errors.js';
export { ERROR_CODES, type Connection, type ConnectErrorCode, type ConnectionStatus, type ConnectResultMessage } from './protocol.js';
export { providerDisplayName } from './providers.js';
