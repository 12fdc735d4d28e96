/**
 * What crosses between this package and `authpipe.handler()` in @authpipe/node: the callback
 * page's message (popup mode), the query it redirects with (redirect mode), and the flow id that
 * ties either to one attempt. The shapes mirror `ConnectResultMessage` in @authpipe/node's
 * `lib/handler/` (`routes.ts`, `pages.ts`); the browser tests there run the two against each other.
 */

import { ERROR_CODES } from './generated.js';
import type { ConnectionStatus } from './generated.js';

/**
 * The error codes a connect attempt can end with: @authpipe/node's `ERROR_CODES` (the handler's
 * page reports any of them). `./generated.ts` is generated from the same source as
 * @authpipe/node's (the Rust core's `ErrorCode`), by `crates/authpipe-core/tests/generated_ts.rs`.
 */
export { ERROR_CODES };

/** A stable error code; `AUTHORIZATION_DENIED` when the user declined, `SESSION_INVALID` when the session token was refused. */
export type ConnectErrorCode = (typeof ERROR_CODES)[number];

/** Status of a connection, as @authpipe/node reports it. */
export type { ConnectionStatus };

/** A connection as the browser sees it: metadata from the callback page, never a token. */
export interface Connection {
  readonly provider: string;
  readonly tenantId: string;
  readonly userId: string;
  readonly status: ConnectionStatus;
  readonly scopes: readonly string[];
  /** The account at the provider (the Attio workspace), when known. */
  readonly account: { readonly id: string | null; readonly name: string | null } | null;
}

/** Why a connect attempt failed: a stable code and words fit to show the user. */
export interface ConnectError {
  readonly code: ConnectErrorCode;
  readonly message: string;
}

/** The callback page's `postMessage`. */
export type ConnectResultMessage = (
  | { type: 'authpipe:connect'; ok: true; connection: Connection }
  | { type: 'authpipe:connect'; ok: false; error: ConnectError }
) & { flowId?: string };

/** A new flow id: 128 random bits, base64url (what the handler's `flow` parameter accepts). */
export function newFlowId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return btoa(String.fromCharCode(...bytes))
    .replace(/\+/g, '-')
    .replace(/\//g, '_')
    .replace(/=+$/, '');
}

/** `data` if it is the handler's result for `flowId`; anything else is not ours to read. */
export function resultFor(data: unknown, flowId: string): ConnectResultMessage | null {
  if (typeof data !== 'object' || data === null) return null;
  const message = data as { type?: unknown; flowId?: unknown; ok?: unknown; connection?: unknown; error?: unknown };
  if (message.type !== 'authpipe:connect' || message.flowId !== flowId) return null;
  if (message.ok === true && isConnection(message.connection)) return { type: 'authpipe:connect', ok: true, connection: message.connection, flowId };
  const error = message.error as { code?: unknown; message?: unknown } | null | undefined;
  if (message.ok === false && typeof error?.code === 'string' && typeof error.message === 'string') {
    return { type: 'authpipe:connect', ok: false, error: { code: knownCode(error.code), message: error.message }, flowId };
  }
  return null;
}

/** The parameters the callback page adds to the return page's query (redirect mode). */
export const RETURN_PARAMS = ['authpipe', 'authpipe_flow', 'authpipe_connection', 'authpipe_error', 'authpipe_message'] as const;

/** The outcome in a return page's query, or null when it carries none (or an unreadable one). */
export function resultFromQuery(query: URLSearchParams): ConnectResultMessage | null {
  const outcome = query.get('authpipe');
  const flowId = query.get('authpipe_flow') ?? undefined;
  if (outcome === 'connected') {
    let connection: unknown;
    try {
      connection = JSON.parse(query.get('authpipe_connection') ?? '');
    } catch {
      return null;
    }
    return isConnection(connection) ? { type: 'authpipe:connect', ok: true, connection, flowId } : null;
  }
  if (outcome === 'error') {
    const error = { code: knownCode(query.get('authpipe_error')), message: query.get('authpipe_message') ?? 'The connection could not be completed.' };
    return { type: 'authpipe:connect', ok: false, error, flowId };
  }
  return null;
}

function isConnection(value: unknown): value is Connection {
  const c = value as Partial<Connection> | null;
  return typeof c === 'object' && c !== null && typeof c.provider === 'string' && typeof c.tenantId === 'string' && typeof c.userId === 'string' && typeof c.status === 'string' && Array.isArray(c.scopes);
}

/** A code as one of ours; one this version does not know (a newer server's) reads as `INTERNAL`. */
function knownCode(code: string | null): ConnectErrorCode {
  return (ERROR_CODES as readonly (string | null)[]).includes(code) ? (code as ConnectErrorCode) : 'INTERNAL';
}
