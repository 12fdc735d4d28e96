/**
 * `authpipe.handler()`: the browser side of the connect flow as a plain Node
 * `(req, res) => void`, usable with `http`, Express (`app.use('/authpipe', handle)`) and Fastify
 * (`fastify.all('/authpipe/*', (req, reply) => { reply.hijack(); handle(req.raw, reply.raw); })`).
 *
 *   GET  {basePath}/connect/:provider?session=<token>&flow=<id> -> 302 to the provider (sets the flow cookie)
 *   POST {basePath}/connect/:provider  (form fields `session`, `flow`; or header `Authpipe-Session`)
 *   GET|POST {basePath}/callback[/:provider]                   -> HTML page that postMessages the result
 *
 * `flow` is an id the page made for this attempt (`@authpipe/react` makes one per click). It rides
 * in the flow's cookie and comes back in the page's message and in the `returnTo` redirect, so a
 * page believes only its own attempt's answer; it is not a credential (the cookie's binding is).
 * `mode=redirect` says the page left for the provider: the callback page then redirects to
 * `returnTo` even when its window has an opener.
 *
 * The flow is bound to the browser by an HttpOnly cookie of its own, checked at the callback
 * (`__Host-` prefixed and `Secure` when the app is served over https; see `flow-cookie.ts`). Pages carry
 * `Referrer-Policy: no-referrer` and a CSP that allows only their own inline script, and show
 * error codes with our own words, never a provider's text. Where the browser goes afterwards is
 * fixed by configuration, never by a request parameter. A parameter given twice is refused: which
 * copy counts would otherwise depend on the parser.
 * @internal (the public entry point is `Authpipe.handler`)
 */
import { randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { uniqueParams } from './args';
import { AuthpipeError, fromNative, invalidArgument } from './errors';
import type { AuthpipeErrorCode } from './errors';
import { clearFlowCookie, FLOW_ID, readFlowCookie, setFlowCookie, type CookieScope, type FlowMode } from './flow-cookie';
import type { Connection } from './types';

/** Options of {@link Authpipe.handler}. */
export interface HandlerOptions {
  /**
   * The app's origin (e.g. `https://app.example.com`): the only origin the callback page
   * `postMessage`s to, and the origin `returnTo` must be on.
   */
  appOrigin: string;
  /** Where the handler is mounted; default `/authpipe`. */
  basePath?: string;
  /**
   * Who is connecting, for `/connect/:provider` requests without a `session` token (e.g. from
   * the app's own session cookie). Return `null` to refuse.
   */
  resolveUser?: (req: IncomingMessage) => Promise<{ tenantId: string; userId: string } | null> | { tenantId: string; userId: string } | null;
  /** Where the callback page sends the browser when it has no opener window; default `appOrigin` + `/`. */
  returnTo?: string;
}

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

/** What the handler needs from an Authpipe instance. */
export interface HandlerBackend {
  sessionKey(token: string, provider: string): Promise<{ tenantId: string; userId: string }>;
  startConnect(input: { provider: string; tenantId: string; userId: string; browserBinding: string }): Promise<{ url: string; callbackMethod: string }>;
  handleCallback(params: Record<string, string>, provider: string | undefined, browserBinding: string | undefined): Promise<Connection>;
}

const MAX_BODY_BYTES = 64 * 1024;
const SESSION_HEADER = 'authpipe-session';

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

export function createHandler(backend: HandlerBackend, options: HandlerOptions): (req: IncomingMessage, res: ServerResponse) => void {
  const appOrigin = checkOrigin(options.appOrigin);
  const basePath = (options.basePath ?? '/authpipe').replace(/\/+$/, '');
  if (!basePath.startsWith('/')) throw invalidArgument('basePath must start with "/"');
  const returnTo = options.returnTo ?? `${appOrigin}/`;
  if (new URL(returnTo, appOrigin).origin !== appOrigin) throw invalidArgument('returnTo must be on appOrigin');
  const callbackPath = `${basePath}/callback`;

  return (req, res) => {
    route(req, res).catch((err: unknown) => {
      // A bug or a closed instance: answer, never leave the request hanging.
      if (!res.headersSent) page(res, 500, resultFor(fromNative(err)), appOrigin, returnTo);
    });
  };

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      await dispatch(req, res);
    } catch (err) {
      if (!(err instanceof URIError)) throw err;
      page(res, 400, resultFor(invalidArgument('the request path is not valid percent-encoding')), appOrigin, returnTo);
    }
  }

  async function dispatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // Express strips its mount path from req.url; originalUrl keeps the whole path.
    const raw = (req as { originalUrl?: string }).originalUrl ?? req.url ?? '/';
    const url = new URL(raw, 'http://handler.invalid');
    const path = url.pathname;
    const connect = path.startsWith(`${basePath}/connect/`) ? path.slice(`${basePath}/connect/`.length) : undefined;
    if (connect !== undefined && (req.method === 'GET' || req.method === 'POST') && !connect.includes('/')) {
      return startFlow(req, res, decodeURIComponent(connect), url.searchParams);
    }
    if (path === callbackPath || path.startsWith(`${callbackPath}/`)) {
      const named = path === callbackPath ? undefined : decodeURIComponent(path.slice(callbackPath.length + 1));
      if (req.method === 'GET' || req.method === 'POST') return finishFlow(req, res, url.searchParams, named);
    }
    res.writeHead(404, securityHeaders({ 'content-type': 'text/plain; charset=utf-8' })).end('not found');
  }

  /**
   * The connect request's `session` and `flow`: each from the query, a POST form (kept out of
   * logs and history) or, for the session, a header; each given once at most.
   */
  async function connectParams(req: IncomingMessage, query: URLSearchParams): Promise<{ session?: string; flowId?: string; mode?: FlowMode }> {
    const header = req.headers[SESSION_HEADER];
    if (Array.isArray(header)) throw invalidArgument(`the ${SESSION_HEADER} header is given more than once`);
    const fromQuery = uniqueParams(query, 'query');
    const fromBody = req.method === 'POST' ? uniqueParams(await readForm(req), 'body') : {};
    const once = (name: string, ...values: Array<string | undefined>): string | undefined => {
      const given = values.filter((v): v is string => typeof v === 'string' && v !== '');
      if (given.length > 1) throw invalidArgument(`${name} is given more than once (in the query, the body or a header): give it once`);
      return given[0];
    };
    const flowId = once('the flow id', fromQuery.flow, fromBody.flow);
    if (flowId !== undefined && !FLOW_ID.test(flowId)) throw invalidArgument('flow must be 16 to 128 characters of A-Z, a-z, 0-9, "-" and "_"');
    const mode = once('mode', fromQuery.mode, fromBody.mode);
    if (mode !== undefined && mode !== 'popup' && mode !== 'redirect') throw invalidArgument('mode must be "popup" or "redirect"');
    return { session: once('the connect session', fromQuery.session, fromBody.session, header), flowId, mode };
  }

  async function startFlow(req: IncomingMessage, res: ServerResponse, provider: string, query: URLSearchParams): Promise<void> {
    let flowId: string | undefined;
    let mode: FlowMode | undefined;
    try {
      const params = await connectParams(req, query);
      ({ flowId, mode } = params);
      const who = params.session ? await backend.sessionKey(params.session, provider) : await options.resolveUser?.(req);
      if (!who) throw new AuthpipeError('SESSION_INVALID', 'no connect session token and no signed-in user: pass ?session=<token from createConnectSession>');
      const browserBinding = randomBytes(32).toString('base64url');
      const started = await backend.startConnect({ provider, tenantId: who.tenantId, userId: who.userId, browserBinding });
      const state = new URL(started.url).searchParams.get('state') ?? '';
      const cookie = setFlowCookie(state, { binding: browserBinding, flowId, mode }, cookieScope(req), started.callbackMethod === 'POST');
      res.writeHead(302, securityHeaders({ location: started.url, 'set-cookie': cookie }));
      res.end();
    } catch (err) {
      page(res, 400, { ...resultFor(fromNative(err)), flowId }, appOrigin, returnTo, undefined, mode);
    }
  }

  async function finishFlow(req: IncomingMessage, res: ServerResponse, query: URLSearchParams, provider: string | undefined): Promise<void> {
    let params: Record<string, string>;
    try {
      params = uniqueParams(req.method === 'POST' ? await readForm(req) : query, 'callback');
    } catch (err) {
      return page(res, 400, resultFor(fromNative(err)), appOrigin, returnTo);
    }
    // The flow's own cookie, found by the state the callback carries (no state: no flow to find).
    const state = params.state ?? '';
    const scope = cookieScope(req);
    const cookie = state ? readFlowCookie(req.headers.cookie, state, scope) : undefined;
    const clear = state ? clearFlowCookie(state, scope) : undefined;
    const { flowId, mode } = cookie ?? {};
    try {
      const connection = await backend.handleCallback(params, provider, cookie?.binding);
      const { provider: p, tenantId, userId, status, scopes, account } = connection;
      page(res, 200, { type: 'authpipe:connect', ok: true, connection: { provider: p, tenantId, userId, status, scopes, account }, flowId }, appOrigin, returnTo, clear, mode);
    } catch (err) {
      page(res, 400, { ...resultFor(fromNative(err)), flowId }, appOrigin, returnTo, clear, mode);
    }
  }

  function cookieScope(req: IncomingMessage): CookieScope {
    return { secure: isSecure(req), callbackPath };
  }

  /** Whether the browser reached us over https: the app's own origin says so, or the request. */
  function isSecure(req: IncomingMessage): boolean {
    return appOrigin.startsWith('https:') || Boolean((req.socket as { encrypted?: boolean }).encrypted) || req.headers['x-forwarded-proto'] === 'https';
  }
}

function checkOrigin(value: unknown): string {
  if (typeof value !== 'string') throw invalidArgument('appOrigin must be a string such as "https://app.example.com"');
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw invalidArgument('appOrigin must be an origin such as "https://app.example.com"');
  }
  const loopback = ['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname);
  if (url.origin !== value.replace(/\/$/, '') || !(url.protocol === 'https:' || (url.protocol === 'http:' && loopback))) {
    throw invalidArgument('appOrigin must be an https origin (scheme, host, port; no path), or http on loopback');
  }
  return url.origin;
}

/**
 * A form body, at most {@link MAX_BODY_BYTES}. Past that it rejects at once and drains the rest
 * unread: the stream is not destroyed, since that would close the socket before the 400 page.
 */
function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) return void chunks.push(chunk);
      req.off('data', onData).off('end', onEnd).resume();
      chunks.length = 0;
      reject(invalidArgument('the request body is larger than 64 KiB'));
    };
    const onEnd = () => resolve(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
    req.on('data', onData).on('end', onEnd).once('error', reject);
  });
}

/** The page's result: the code, and our message for it (the app gets the full error elsewhere). */
function resultFor(err: AuthpipeError): ConnectResultMessage {
  return { type: 'authpipe:connect', ok: false, error: { code: err.code, message: PAGE_MESSAGES[err.code] ?? PAGE_FALLBACK_MESSAGE } };
}

function securityHeaders(extra: Record<string, string>, nonce?: string): Record<string, string> {
  return {
    'cache-control': 'no-store',
    'referrer-policy': 'no-referrer',
    'x-content-type-options': 'nosniff',
    'content-security-policy': `default-src 'none'; script-src ${nonce ? `'nonce-${nonce}'` : "'none'"}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
    ...extra,
  };
}

/** JSON safe to embed in a <script>: no `</script>`, no HTML-significant or line-breaking characters. */
function scriptJson(value: unknown): string {
  return JSON.stringify(value).replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/**
 * The page the browser lands on. It answers the window that opened it, unless the flow was
 * started for a full-page redirect: a tab that some other page opened has an opener too, and must
 * not post there and close itself.
 */
function page(res: ServerResponse, status: number, result: ConnectResultMessage, appOrigin: string, returnTo: string, cookie?: string, mode?: FlowMode): void {
  const nonce = randomBytes(16).toString('base64');
  const target = new URL(returnTo, appOrigin);
  // Without an opener (a full-page redirect), the outcome travels in returnTo's query.
  target.searchParams.set('authpipe', result.ok ? 'connected' : 'error');
  if (result.flowId) target.searchParams.set('authpipe_flow', result.flowId);
  if (result.ok) {
    target.searchParams.set('authpipe_connection', JSON.stringify(result.connection));
  } else {
    target.searchParams.set('authpipe_error', result.error.code);
    target.searchParams.set('authpipe_message', result.error.message);
  }
  const title = result.ok ? 'Connected' : 'Could not connect';
  const body = `<!doctype html><html><head><meta charset="utf-8"><title>${title}</title></head><body>
<p>${title}. You can close this window.</p>
<script nonce="${nonce}">
(function () {
  var result = ${scriptJson(result)};
  var answerOpener = ${mode !== 'redirect'};
  if (answerOpener && window.opener) { window.opener.postMessage(result, ${scriptJson(appOrigin)}); window.close(); }
  else { window.location.replace(${scriptJson(target.href)}); }
})();
</script></body></html>`;
  const headers = securityHeaders({ 'content-type': 'text/html; charset=utf-8' }, nonce);
  if (cookie) headers['set-cookie'] = cookie;
  res.writeHead(status, headers).end(body);
}
