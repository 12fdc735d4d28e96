/**
 * What the handler answers with: the result page (which posts to the opener or redirects to
 * `returnTo`), the 404, and the headers every answer carries. Pages show error codes with our own
 * words, never a provider's text, under a CSP that allows only their own inline script.
 * @internal
 */
import { randomBytes } from 'node:crypto';
import type { AuthpipeError, AuthpipeErrorCode } from '../errors';
import type { Connection } from '../types';
import type { FlowMode } from './flow-cookie';

/** The connection as the browser sees it: metadata, never a token. */
export type ConnectedConnection = Pick<Connection, 'provider' | 'tenantId' | 'userId' | 'status' | 'scopes' | 'account'>;

/**
 * What the callback page posts to `window.opener`. `flowId` is the `flow` the connect request
 * carried, when it carried one.
 */
export type ConnectResultMessage = (
  | { type: 'authpipe:connect'; ok: true; connection: ConnectedConnection }
  | { type: 'authpipe:connect'; ok: false; error: { code: string; message: string } }
) & { flowId?: string };

/** An answer, before it is written to Node's `res` or made a WHATWG `Response`. */
export interface HandlerResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** What the callback page says for each code: our words only, never a provider's text. */
const PAGE_MESSAGES: Partial<Record<AuthpipeErrorCode, string>> = {
  AUTHORIZATION_DENIED: 'The authorization was declined. You can connect again.',
  AUTHORIZATION_FAILED: 'The provider could not authorize the connection.',
  BROWSER_MISMATCH: 'This connection was started in another browser. Start it again here.',
  STATE_EXPIRED: 'The connection took too long. Start it again.',
  STATE_ALREADY_USED: 'This connection attempt was already completed.',
  INVALID_STATE: 'This connection attempt is not known. Start it again.',
  SESSION_INVALID: 'The connect session is missing, expired or already used. Start again from the app.',
  INSUFFICIENT_SCOPE: 'The connection lacks permissions the app needs. Grant them and connect again.',
  CODE_EXCHANGE_FAILED: 'The provider did not accept the authorization. Start again.',
  INVALID_ARGUMENT: 'The request was not valid.',
};
const PAGE_FALLBACK_MESSAGE = 'The connection could not be completed.';

/** The page's result: the code, and our message for it (the app gets the full error elsewhere). */
export function resultFor(err: AuthpipeError): ConnectResultMessage {
  return { type: 'authpipe:connect', ok: false, error: { code: err.code, message: PAGE_MESSAGES[err.code] ?? PAGE_FALLBACK_MESSAGE } };
}

export function securityHeaders(extra: Record<string, string>, nonce?: string): Record<string, string> {
  return {
    'cache-control': 'no-store',
    'referrer-policy': 'no-referrer',
    'x-content-type-options': 'nosniff',
    'content-security-policy': `default-src 'none'; script-src ${nonce ? `'nonce-${nonce}'` : "'none'"}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
    ...extra,
  };
}

export function notFound(): HandlerResponse {
  return { status: 404, headers: securityHeaders({ 'content-type': 'text/plain; charset=utf-8' }), body: 'not found' };
}

export function redirect(location: string, cookie: string): HandlerResponse {
  return { status: 302, headers: securityHeaders({ location, 'set-cookie': cookie }), body: '' };
}

/** JSON safe to embed in a <script>: no `</script>`, no HTML-significant or line-breaking characters. */
function scriptJson(value: unknown): string {
  return JSON.stringify(value).replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** Where the page sends a browser that has no opener: `returnTo`, with the outcome in its query. */
function returnUrl(result: ConnectResultMessage, appOrigin: string, returnTo: string): string {
  const target = new URL(returnTo, appOrigin);
  target.searchParams.set('authpipe', result.ok ? 'connected' : 'error');
  if (result.flowId) target.searchParams.set('authpipe_flow', result.flowId);
  if (result.ok) {
    target.searchParams.set('authpipe_connection', JSON.stringify(result.connection));
  } else {
    target.searchParams.set('authpipe_error', result.error.code);
    target.searchParams.set('authpipe_message', result.error.message);
  }
  return target.href;
}

export interface PageOptions {
  appOrigin: string;
  returnTo: string;
  /** A `Set-Cookie` to send with it (the flow cookie's removal). */
  cookie?: string;
  mode?: FlowMode;
}

/**
 * The page the browser lands on. It answers the window that opened it, unless the flow was
 * started for a full-page redirect: a tab that some other page opened has an opener too, and must
 * not post there and close itself.
 */
export function resultPage(status: number, result: ConnectResultMessage, options: PageOptions): HandlerResponse {
  const nonce = randomBytes(16).toString('base64');
  const title = result.ok ? 'Connected' : 'Could not connect';
  const body = `<!doctype html><html><head><meta charset="utf-8"><title>${title}</title></head><body>
<p>${title}. You can close this window.</p>
<script nonce="${nonce}">
(function () {
  var result = ${scriptJson(result)};
  var answerOpener = ${options.mode !== 'redirect'};
  if (answerOpener && window.opener) { window.opener.postMessage(result, ${scriptJson(options.appOrigin)}); window.close(); }
  else { window.location.replace(${scriptJson(returnUrl(result, options.appOrigin, options.returnTo))}); }
})();
</script></body></html>`;
  const headers = securityHeaders({ 'content-type': 'text/html; charset=utf-8' }, nonce);
  if (options.cookie) headers['set-cookie'] = options.cookie;
  return { status, headers, body };
}
