/**
 * Getting a browser window to the handler's `/connect/:provider`: a popup opened at once (so that
 * popup blockers, which allow only windows opened during a click, let it through) and pointed at
 * the handler when the session token is known, or the page itself in redirect mode.
 * Browser-only: called from event handlers, never during a render.
 */
import { ConnectError } from './errors.js';
import { providerDisplayName } from './providers.js';

/** Popup sizes that fit each provider's consent page without scrolling. */
const POPUP_SIZES: Readonly<Record<string, { width: number; height: number }>> = {
  attio: { width: 500, height: 720 },
  hubspot: { width: 600, height: 760 },
  salesforce: { width: 520, height: 700 },
  dynamics365: { width: 500, height: 680 },
};
const DEFAULT_POPUP_SIZE = { width: 520, height: 720 };

/** Opens an empty popup centred over the current window; null when the browser blocked it. */
export function openBlankPopup(provider: string, name: string): Window | null {
  const { width, height } = POPUP_SIZES[provider] ?? DEFAULT_POPUP_SIZE;
  const left = Math.max(0, Math.round(window.screenX + (window.outerWidth - width) / 2));
  const top = Math.max(0, Math.round(window.screenY + (window.outerHeight - height) / 2));
  const popup = window.open('about:blank', name, `popup=yes,width=${width},height=${height},left=${left},top=${top}`);
  // Some blockers hand back a window that is already closed.
  if (!popup || popup.closed) return null;
  try {
    // Same origin until it navigates: say what is happening while the token is fetched.
    popup.document.title = `Connect ${providerDisplayName(provider)}`;
    popup.document.body.style.font = '15px system-ui, sans-serif';
    popup.document.body.textContent = `Connecting to ${providerDisplayName(provider)}…`;
  } catch {
    // A browser that gives the blank popup another origin: it stays blank, which is harmless.
  }
  return popup;
}

/** Where `/connect/:provider` is, for the handler mounted at `baseUrl` (relative to the page or absolute). */
export function connectUrl(baseUrl: string, provider: string): URL {
  try {
    return new URL(`${baseUrl.replace(/\/+$/, '')}/connect/${encodeURIComponent(provider)}`, window.location.href);
  } catch {
    throw new ConnectError('INVALID_ARGUMENT', 'baseUrl is not a URL: give the path where authpipe.handler() is mounted, or an absolute URL');
  }
}

/** The window to send: the popup (its name lets a form target it), or the page itself. */
export type ConnectWindow = { popup: Window; name: string } | 'page';

/**
 * Sends `into` to the handler. With a session token it POSTs a form, which keeps the token out of
 * the address bar, history and access logs; without one it is a plain GET, so that the app's own
 * (SameSite=Lax) cookies reach the handler's `resolveUser`.
 */
export function navigateToConnect(into: ConnectWindow, url: URL, fields: { session?: string; flow: string; mode: 'popup' | 'redirect' }): void {
  if (fields.session === undefined) {
    const get = new URL(url);
    get.searchParams.set('flow', fields.flow);
    get.searchParams.set('mode', fields.mode);
    if (into === 'page') window.location.assign(get.href);
    else into.popup.location.href = get.href;
    return;
  }
  const form = document.createElement('form');
  form.method = 'POST';
  form.action = url.href;
  form.target = into === 'page' ? '_self' : into.name;
  form.style.display = 'none';
  for (const [name, value] of Object.entries(fields) as Array<[string, string]>) {
    const input = document.createElement('input');
    input.type = 'hidden';
    input.name = name;
    input.value = value;
    form.appendChild(input);
  }
  document.body.appendChild(form);
  form.submit();
  form.remove();
}
