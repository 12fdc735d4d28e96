/**
 * One connect attempt, outside React: a popup watched until the handler's page answers for this
 * attempt's flow id or the user closes it, or (redirect mode) a navigation of the page itself,
 * whose outcome the return page reads with {@link takeReturnedResult}.
 */
import { ConnectError } from './errors.js';
import { connectUrl, navigateToConnect, openBlankPopup, type ConnectWindow } from './navigate.js';
import { newFlowId, RETURN_PARAMS, resultFor, resultFromQuery, type Connection, type ConnectResultMessage } from './protocol.js';

/** How an attempt ended. `redirected` never reaches the page that started it: it unloads. */
export type Outcome = { kind: 'connected'; connection: Connection } | { kind: 'error'; error: ConnectError } | { kind: 'closed' };

export interface AttemptOptions {
  provider: string;
  baseUrl: string;
  mode: 'popup' | 'redirect';
  sessionToken?: string;
  getSessionToken?: () => Promise<string>;
}

export interface Attempt {
  /**
   * Settles once, with the outcome; never rejects. A redirect settles only if it could not leave
   * (no session token): once it navigates, the page's outcome arrives on the return page.
   */
  readonly outcome: Promise<Outcome>;
  /** Whether a popup carries this attempt (false: the page itself goes, or is about to). */
  readonly inPopup: boolean;
  /** Brings the popup to the front (a second click while the attempt is open). */
  focus(): void;
}

/** How often a popup is checked for having been closed, and how long a message may lag its close. */
const CLOSED_POLL_MS = 200;

/**
 * Starts an attempt. Call it inside the click handler: the popup must open before any `await`.
 * Throws a {@link ConnectError} (`INVALID_ARGUMENT`) for a `baseUrl` that is not a URL, before
 * any window opens.
 */
export function startAttempt(options: AttemptOptions): Attempt {
  const url = connectUrl(options.baseUrl, options.provider);
  const flowId = newFlowId();
  // The popup's name is readable by every page it shows (the provider's too): not the flow id.
  const name = `authpipe_${newFlowId()}`;
  const popup = options.mode === 'popup' ? openBlankPopup(options.provider, name) : null;
  let settle!: (outcome: Outcome) => void;
  const outcome = new Promise<Outcome>((resolve) => (settle = resolve));
  let done = false;
  const cleanups: Array<() => void> = [];
  const finish = (result: Outcome) => {
    if (done) return;
    done = true;
    for (const cleanup of cleanups) cleanup();
    settle(result);
  };
  const navigate = (into: ConnectWindow, session: string | undefined) => {
    try {
      navigateToConnect(into, url, { session, flow: flowId, mode: into === 'page' ? 'redirect' : 'popup' });
    } catch (error) {
      finish({ kind: 'error', error: new ConnectError('INTERNAL', `could not open the handler's connect page${error instanceof Error ? `: ${error.message}` : ''}`) });
    }
  };

  if (!popup) {
    // Redirect mode, or a blocked popup: the page itself goes, and comes back to `returnTo`.
    rememberPendingFlow(options.provider, flowId);
    sessionToken(options).then(
      (session) => navigate('page', session),
      (error: unknown) => {
        forgetPendingFlow(options.provider);
        finish({ kind: 'error', error: tokenError(error) });
      },
    );
    return { outcome, inPopup: false, focus() {} };
  }

  const handlerOrigin = url.origin;
  const onMessage = (event: MessageEvent) => {
    // Only the popup we opened, on the handler's origin, answering for this attempt.
    if (event.source !== popup || event.origin !== handlerOrigin) return;
    const result = resultFor(event.data, flowId);
    if (result) finish(outcomeOf(result));
  };
  window.addEventListener('message', onMessage);
  cleanups.push(() => window.removeEventListener('message', onMessage));

  // A closed popup is reported one check after it is seen closed: its last message, posted just
  // before it closed, may still be queued behind the timer. Focus coming back to this window is
  // a check too: browsers slow the timers of windows that are covered.
  let seenClosed = false;
  const check = () => {
    if (!popup.closed) return;
    if (seenClosed) finish({ kind: 'closed' });
    seenClosed = true;
  };
  const poll = window.setInterval(check, CLOSED_POLL_MS);
  window.addEventListener('focus', check);
  cleanups.push(() => {
    window.clearInterval(poll);
    window.removeEventListener('focus', check);
    if (!popup.closed) popup.close();
  });

  sessionToken(options).then(
    (session) => {
      if (!done && !popup.closed) navigate({ popup, name }, session);
    },
    (error: unknown) => finish({ kind: 'error', error: tokenError(error) }),
  );

  return { outcome, inPopup: true, focus: () => popup.focus() };
}

/**
 * The outcome a redirect brought back to this page for `provider`, once: only when the query
 * carries the flow id this tab stored before it left (so a crafted link reports nothing), and
 * then the parameters leave the address bar.
 */
export function takeReturnedResult(provider: string): Outcome | null {
  const result = resultFromQuery(new URLSearchParams(window.location.search));
  if (!result?.flowId || result.flowId !== pendingFlow(provider)) return null;
  forgetPendingFlow(provider);
  const clean = new URL(window.location.href);
  for (const param of RETURN_PARAMS) clean.searchParams.delete(param);
  window.history.replaceState(window.history.state, '', clean.href);
  return outcomeOf(result);
}

function outcomeOf(result: ConnectResultMessage): Outcome {
  return result.ok ? { kind: 'connected', connection: result.connection } : { kind: 'error', error: new ConnectError(result.error.code, result.error.message) };
}

/** The session token for this attempt (undefined: the handler's `resolveUser` decides). */
async function sessionToken(options: AttemptOptions): Promise<string | undefined> {
  if (options.sessionToken !== undefined) return options.sessionToken;
  if (!options.getSessionToken) return undefined;
  const token: unknown = await options.getSessionToken();
  if (typeof token !== 'string' || token === '') throw new ConnectError('SESSION_INVALID', 'getSessionToken() did not return a session token');
  return token;
}

function tokenError(error: unknown): ConnectError {
  if (error instanceof ConnectError) return error;
  return new ConnectError('SESSION_INVALID', `getSessionToken() failed${error instanceof Error ? `: ${error.message}` : ''}`);
}

// The flow a redirect left with, per provider, in this tab's sessionStorage. Storage can be
// unavailable (disabled, or full); the return is then not recognised, and reports nothing.
const pendingKey = (provider: string) => `authpipe:flow:${provider}`;

function rememberPendingFlow(provider: string, flowId: string): void {
  try {
    window.sessionStorage.setItem(pendingKey(provider), flowId);
  } catch {
    // See above.
  }
}

function pendingFlow(provider: string): string | null {
  try {
    return window.sessionStorage.getItem(pendingKey(provider));
  } catch {
    return null;
  }
}

function forgetPendingFlow(provider: string): void {
  try {
    window.sessionStorage.removeItem(pendingKey(provider));
  } catch {
    // See above.
  }
}
