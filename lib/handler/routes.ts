/**
 * The connect flow's browser side, once for every server: routes, session and flow parameters,
 * the flow cookie, and the pages, over a request and an answer that `node.ts` (`(req, res)`) and
 * `fetch.ts` (WHATWG `Request` -> `Response`) translate.
 *
 *   GET  {basePath}/connect/:provider?session=<token>&flow=<id> -> 302 to the provider (sets the flow cookie)
 *   POST {basePath}/connect/:provider  (form fields `session`, `flow`, `mode`; or header `Authpipe-Session`)
 *   GET|POST {basePath}/callback[/:provider]                   -> HTML page that postMessages the result
 *
 * `flow` is an id the page made for this attempt (`@authpipe/react` makes one per click). It rides
 * in the flow's cookie and comes back in the page's message and in the `returnTo` redirect, so a
 * page believes only its own attempt's answer; it is not a credential (the cookie's binding is).
 * `mode=redirect` says the page left for the provider: the callback page then redirects to
 * `returnTo` even when its window has an opener.
 *
 * The flow is bound to the browser by an HttpOnly cookie of its own, checked at the callback
 * (`__Host-` prefixed and `Secure` when the app is served over https; see `flow-cookie.ts`).
 * Where the browser goes afterwards is fixed by configuration, never by a request parameter. A
 * parameter given twice is refused: which copy counts would otherwise depend on the parser.
 * @internal (the public entry points are `Authpipe.handler` and `Authpipe.fetchHandler`)
 */
import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import * as args from '../args';
import { uniqueParams } from '../args';
import { AuthpipeError, fromNative, invalidArgument } from '../errors';
import type { Connection } from '../types';
import { clearFlowCookie, FLOW_ID, readFlowCookie, setFlowCookie, type CookieScope, type FlowMode } from './flow-cookie';
import { notFound, redirect, resultFor, resultPage, type ConnectResultMessage, type HandlerResponse } from './pages';

/** Options of {@link Authpipe.handler} and {@link Authpipe.fetchHandler}; `R` is the server's request type. */
export interface HandlerOptions<R = IncomingMessage> {
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
  resolveUser?: (req: R) => Promise<{ tenantId: string; userId: string } | null> | { tenantId: string; userId: string } | null;
  /** Where the callback page sends the browser when it has no opener window; default `appOrigin` + `/`. */
  returnTo?: string;
}

/** What the handler needs from an Authpipe instance. */
export interface HandlerBackend {
  sessionKey(token: string, provider: string): Promise<{ tenantId: string; userId: string }>;
  startConnect(input: { provider: string; tenantId: string; userId: string; browserBinding: string }): Promise<{ url: string; callbackMethod: string }>;
  handleCallback(params: Record<string, string>, provider: string | undefined, browserBinding: string | undefined): Promise<Connection>;
}

/** A request as the routes need it, whatever server it came from. */
export interface HandlerRequest<R> {
  method: string;
  /** The path and query the browser asked for, mount path included. */
  url: string;
  /** A header by lower-case name; an array when it came more than once. */
  header(name: string): string | string[] | undefined;
  /** Whether the connection itself is TLS (a proxy in front may say so instead). */
  encrypted: boolean;
  /** The body as a form, at most 64 KiB: past that it rejects with `INVALID_ARGUMENT`. */
  form(): Promise<URLSearchParams>;
  /** The server's own request, for `resolveUser`. */
  raw: R;
}

export const MAX_BODY_BYTES = 64 * 1024;
const SESSION_HEADER = 'authpipe-session';

/** The routes: a function that answers every request, never rejecting. */
export function createRoutes<R>(backend: HandlerBackend, handlerOptions: HandlerOptions<R>): (req: HandlerRequest<R>) => Promise<HandlerResponse> {
  // Read once, here: a request must not meet an option's getter, nor a resolveUser that is no function.
  const o = args.fields(handlerOptions, 'options', ['appOrigin', 'basePath', 'resolveUser', 'returnTo']);
  if (o.resolveUser !== undefined && o.resolveUser !== null && typeof o.resolveUser !== 'function') throw invalidArgument('resolveUser must be a function');
  const options = { resolveUser: (o.resolveUser ?? undefined) as HandlerOptions<R>['resolveUser'] };
  const appOrigin = checkOrigin(o.appOrigin);
  const basePath = (args.optionalString(o.basePath, 'basePath') ?? '/authpipe').replace(/\/+$/, '');
  if (!basePath.startsWith('/')) throw invalidArgument('basePath must start with "/"');
  const returnTo = args.optionalString(o.returnTo, 'returnTo') ?? `${appOrigin}/`;
  let returnOrigin: string;
  try {
    returnOrigin = new URL(returnTo, appOrigin).origin;
  } catch {
    throw invalidArgument('returnTo must be a URL on appOrigin');
  }
  if (returnOrigin !== appOrigin) throw invalidArgument('returnTo must be on appOrigin');
  const callbackPath = `${basePath}/callback`;
  const page = (status: number, result: ConnectResultMessage, extra: { cookie?: string; mode?: FlowMode } = {}) =>
    resultPage(status, result, { appOrigin, returnTo, ...extra });

  return async (req) => {
    try {
      return await dispatch(req);
    } catch (err) {
      if (err instanceof URIError) return page(400, resultFor(invalidArgument('the request path is not valid percent-encoding')));
      // A bug or a closed instance: answer, never leave the request hanging.
      return page(500, resultFor(fromNative(err)));
    }
  };

  async function dispatch(req: HandlerRequest<R>): Promise<HandlerResponse> {
    const url = new URL(req.url, 'http://handler.invalid');
    const path = url.pathname;
    const connect = path.startsWith(`${basePath}/connect/`) ? path.slice(`${basePath}/connect/`.length) : undefined;
    if (connect !== undefined && (req.method === 'GET' || req.method === 'POST') && !connect.includes('/')) {
      return startFlow(req, decodeURIComponent(connect), url.searchParams);
    }
    if (path === callbackPath || path.startsWith(`${callbackPath}/`)) {
      const named = path === callbackPath ? undefined : decodeURIComponent(path.slice(callbackPath.length + 1));
      if (req.method === 'GET' || req.method === 'POST') return finishFlow(req, url.searchParams, named);
    }
    return notFound();
  }

  /**
   * The connect request's `session`, `flow` and `mode`: each from the query, a POST form (kept
   * out of logs and history) or, for the session, a header; each given once at most.
   */
  async function connectParams(req: HandlerRequest<R>, query: URLSearchParams): Promise<{ session?: string; flowId?: string; mode?: FlowMode }> {
    const header = req.header(SESSION_HEADER);
    if (Array.isArray(header)) throw invalidArgument(`the ${SESSION_HEADER} header is given more than once`);
    const fromQuery = uniqueParams(query, 'query');
    const fromBody = req.method === 'POST' ? uniqueParams(await req.form(), 'body') : {};
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

  async function startFlow(req: HandlerRequest<R>, provider: string, query: URLSearchParams): Promise<HandlerResponse> {
    let flowId: string | undefined;
    let mode: FlowMode | undefined;
    try {
      const params = await connectParams(req, query);
      ({ flowId, mode } = params);
      const { session } = params;
      const who = session ? await backend.sessionKey(session, provider) : await options.resolveUser?.(req.raw);
      if (!who) throw new AuthpipeError('SESSION_INVALID', 'no connect session token and no signed-in user: pass ?session=<token from createConnectSession>');
      const browserBinding = randomBytes(32).toString('base64url');
      const started = await backend.startConnect({ provider, tenantId: who.tenantId, userId: who.userId, browserBinding });
      const state = new URL(started.url).searchParams.get('state') ?? '';
      return redirect(started.url, setFlowCookie(state, { binding: browserBinding, flowId, mode }, cookieScope(req), started.callbackMethod === 'POST'));
    } catch (err) {
      return page(400, { ...resultFor(fromNative(err)), flowId }, { mode });
    }
  }

  async function finishFlow(req: HandlerRequest<R>, query: URLSearchParams, provider: string | undefined): Promise<HandlerResponse> {
    let params: Record<string, string>;
    try {
      params = uniqueParams(req.method === 'POST' ? await req.form() : query, 'callback');
    } catch (err) {
      return page(400, resultFor(fromNative(err)));
    }
    // The flow's own cookie, found by the state the callback carries (no state: no flow to find).
    const state = params.state ?? '';
    const scope = cookieScope(req);
    const cookieHeader = req.header('cookie');
    const cookie = state ? readFlowCookie(Array.isArray(cookieHeader) ? cookieHeader.join('; ') : cookieHeader, state, scope) : undefined;
    const clear = state ? clearFlowCookie(state, scope) : undefined;
    const { flowId, mode } = cookie ?? {};
    try {
      const connection = await backend.handleCallback(params, provider, cookie?.binding);
      const { provider: p, tenantId, userId, status, scopes, account } = connection;
      return page(200, { type: 'authpipe:connect', ok: true, connection: { provider: p, tenantId, userId, status, scopes, account }, flowId }, { cookie: clear, mode });
    } catch (err) {
      return page(400, { ...resultFor(fromNative(err)), flowId }, { cookie: clear, mode });
    }
  }

  function cookieScope(req: HandlerRequest<R>): CookieScope {
    return { secure: isSecure(req), callbackPath };
  }

  /** Whether the browser reached us over https: the app's own origin says so, or the request. */
  function isSecure(req: HandlerRequest<R>): boolean {
    return appOrigin.startsWith('https:') || req.encrypted || req.header('x-forwarded-proto') === 'https';
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
