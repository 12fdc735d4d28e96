/**
 * The flow cookie: what binds a connect flow to the browser that started it. One cookie per
 * flow, named after a hash of the flow's `state`, so flows started side by side (two tabs, two
 * providers' buttons) each keep theirs, and the callback finds its own by the `state` it carries.
 * It holds the browser binding (the secret the core checks), and the page's flow id and mode when
 * the page gave them.
 * @internal
 */
import { createHash } from 'node:crypto';

/** How the page that started the flow waits for its answer. */
export type FlowMode = 'popup' | 'redirect';

export interface FlowCookie {
  binding: string;
  flowId?: string;
  mode?: FlowMode;
}

/** A page's id for one attempt: long enough to be unguessable, cookie- and URL-safe as is. */
export const FLOW_ID = /^[A-Za-z0-9_-]{16,128}$/;

/** The flow lives 10 minutes; its cookie a little longer, so a late callback still names its page. */
const MAX_AGE_SECONDS = 15 * 60;
const PREFIX = 'authpipe_flow_';

export interface CookieScope {
  /** https: `__Host-` prefixed, `Secure`, `Path=/`. */
  secure: boolean;
  /** The callback's path, the cookie's path over plain http. */
  callbackPath: string;
}

function name(state: string, scope: CookieScope): string {
  const id = createHash('sha256').update(state).digest('base64url').slice(0, 22);
  // `__Host-`: the browser refuses it unless Secure, host-only and Path=/, so no sibling
  // subdomain or plain-http page can plant or overwrite the binding.
  return `${scope.secure ? '__Host-' : ''}${PREFIX}${id}`;
}

/** The `Set-Cookie` value for a started flow. */
export function setFlowCookie(state: string, value: FlowCookie, scope: CookieScope, crossSitePost: boolean): string {
  const content = [value.binding, value.flowId ?? '', value.mode ?? ''].join('.');
  // A provider that calls back with a cross-site POST (Copper) only gets SameSite=None cookies.
  const sameSite = crossSitePost ? 'None' : 'Lax';
  if (scope.secure) return `${name(state, scope)}=${content}; Path=/; Max-Age=${MAX_AGE_SECONDS}; HttpOnly; Secure; SameSite=${sameSite}`;
  return `${name(state, scope)}=${content}; Path=${scope.callbackPath}; Max-Age=${MAX_AGE_SECONDS}; HttpOnly; SameSite=${sameSite}${crossSitePost ? '; Secure' : ''}`;
}

/** The `Set-Cookie` value that removes a flow's cookie. */
export function clearFlowCookie(state: string, scope: CookieScope): string {
  if (scope.secure) return `${name(state, scope)}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax`;
  return `${name(state, scope)}=; Path=${scope.callbackPath}; Max-Age=0; HttpOnly; SameSite=Lax`;
}

/** The flow's cookie from a `Cookie` header; a flow id or mode not of our making is dropped. */
export function readFlowCookie(header: string | undefined, state: string, scope: CookieScope): FlowCookie | undefined {
  const wanted = name(state, scope);
  for (const part of header?.split(';') ?? []) {
    const [key, ...rest] = part.trim().split('=');
    if (key !== wanted) continue;
    const [binding = '', flowId, mode] = rest.join('=').split('.');
    return {
      binding,
      flowId: flowId !== undefined && FLOW_ID.test(flowId) ? flowId : undefined,
      mode: mode === 'popup' || mode === 'redirect' ? mode : undefined,
    };
  }
  return undefined;
}
