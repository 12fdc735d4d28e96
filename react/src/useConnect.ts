import { useCallback, useEffect, useRef, useState } from 'react';
import { startAttempt, takeReturnedResult, type Attempt, type Outcome } from './attempt.js';
import { ConnectError } from './errors.js';
import type { Connection } from './protocol.js';

/** Options of {@link useConnect}. */
export interface UseConnectOptions {
  /** The provider to connect, as configured in @authpipe/node (`'attio'`). */
  provider: string;
  /**
   * A token from `authpipe.createConnectSession()`. A session starts one flow: for a second
   * attempt, give a new one, or use `getSessionToken`.
   */
  sessionToken?: string;
  /**
   * Called on each attempt for a fresh session token (e.g. a `fetch` to your backend). The popup
   * opens before it is called, so it may take a round trip without the popup being blocked.
   * With neither this nor `sessionToken`, the handler's `resolveUser` decides who is connecting.
   */
  getSessionToken?: () => Promise<string>;
  /**
   * Where `authpipe.handler()` is mounted: a path on this page's origin (default `/authpipe`) or
   * an absolute URL on another origin. The handler's `appOrigin` must be this page's origin.
   */
  baseUrl?: string;
  /**
   * `'popup'` (default) keeps the page and opens the provider in a popup; if the browser blocks
   * the popup, the page redirects instead. `'redirect'` always leaves the page: the handler's
   * `returnTo` page, with this hook mounted for the same provider, then reports the outcome.
   */
  mode?: 'popup' | 'redirect';
  /** The connection is stored: its metadata (never a token). */
  onSuccess?: (connection: Connection) => void;
  /** The attempt failed; `error.code` is one of @authpipe/node's `ERROR_CODES`. */
  onError?: (error: ConnectError) => void;
  /** The user closed the popup before finishing. Not an error. */
  onClose?: () => void;
}

/** Where an attempt stands. A closed popup returns to the status before the attempt. */
export type ConnectStatus = 'idle' | 'connecting' | 'connected' | 'error';

/** What {@link useConnect} returns. */
export interface UseConnectResult {
  /**
   * Starts an attempt; call it from a click handler (popups are allowed only there). Resolves
   * with the connection, or with `null` when the user closed the popup; rejects with a
   * {@link ConnectError}. While a popup is open, a second call brings it to the front and returns
   * the same promise. In redirect mode the page leaves, and the promise settles only if it could
   * not (`getSessionToken` failed); the return page reports the outcome.
   */
  connect(): Promise<Connection | null>;
  status: ConnectStatus;
  /** The last connection made (here, or reported by a redirect's return page). */
  connection: Connection | null;
  /** The last attempt's error, while `status` is `'error'`. */
  error: ConnectError | null;
}

interface State {
  status: ConnectStatus;
  connection: Connection | null;
  error: ConnectError | null;
}

const IDLE: State = { status: 'idle', connection: null, error: null };

/**
 * Connects the user's account at `provider` through @authpipe/node's handler, for apps that draw
 * their own button ({@link ConnectButton} is built on it). Safe to render on the server: it
 * touches `window` only in effects and in `connect()`.
 *
 * @example
 * const { connect, status } = useConnect({
 *   provider: 'attio',
 *   getSessionToken: () => fetch('/api/connect-session', { method: 'POST' }).then((r) => r.json()).then((b) => b.token),
 *   onSuccess: (connection) => console.log('Connected', connection.account?.name),
 * });
 * // connect() also rejects on an error (onError has it already): catch it where you call it.
 * return <button onClick={() => connect().catch(() => {})} aria-busy={status === 'connecting'}>Connect Attio</button>;
 *
 * An attempt outlives the component: if it unmounts while the popup is open (a menu that
 * closes), the popup stays, and the latest `onSuccess` / `onError` / `onClose` still hear the
 * outcome.
 */
export function useConnect(options: UseConnectOptions): UseConnectResult {
  const [state, setState] = useState<State>(IDLE);
  // The latest props, read when an attempt starts and ends, so `connect` can stay stable.
  const latest = useRef(options);
  latest.current = options;
  const attempt = useRef<{ attempt: Attempt; promise: Promise<Connection | null> } | null>(null);

  const report = useCallback((outcome: Outcome, before: State): Connection | null => {
    const { onSuccess, onError, onClose } = latest.current;
    switch (outcome.kind) {
      case 'connected':
        setState({ status: 'connected', connection: outcome.connection, error: null });
        onSuccess?.(outcome.connection);
        return outcome.connection;
      case 'error':
        setState((s) => ({ status: 'error', connection: s.connection, error: outcome.error }));
        onError?.(outcome.error);
        throw outcome.error;
      case 'closed':
        setState(before);
        onClose?.();
        return null;
    }
  }, []);

  // The return page of a redirect: report the outcome once, if this tab started that flow.
  const { provider } = options;
  useEffect(() => {
    const returned = takeReturnedResult(provider);
    if (returned) {
      try {
        report(returned, IDLE);
      } catch {
        // Reported through onError and `error`; there is no caller to reject.
      }
    }
  }, [provider, report]);

  // Back to a page that had left for the provider (the back/forward cache keeps its state):
  // that attempt is over.
  useEffect(() => {
    const onPageShow = (event: PageTransitionEvent) => {
      if (event.persisted) setState((s) => (s.status === 'connecting' && !attempt.current ? { ...s, status: 'idle' } : s));
    };
    window.addEventListener('pageshow', onPageShow);
    return () => window.removeEventListener('pageshow', onPageShow);
  }, []);

  const before = useRef(state);
  before.current = state;
  const connect = useCallback((): Promise<Connection | null> => {
    if (attempt.current) {
      attempt.current.attempt.focus();
      return attempt.current.promise;
    }
    const { provider, baseUrl = '/authpipe', mode = 'popup', sessionToken, getSessionToken } = latest.current;
    const stateBefore = before.current;
    let started: Attempt;
    try {
      started = startAttempt({ provider, baseUrl, mode, sessionToken, getSessionToken });
    } catch (error) {
      return Promise.resolve().then(() => report({ kind: 'error', error: error instanceof ConnectError ? error : new ConnectError('INTERNAL', String(error)) }, stateBefore));
    }
    setState((s) => ({ ...s, status: 'connecting', error: null }));
    const promise = started.outcome.then((outcome) => {
      attempt.current = null;
      return report(outcome, stateBefore);
    });
    // Only a popup is worth coming back to; a page that is leaving has nothing to focus.
    if (started.inPopup) attempt.current = { attempt: started, promise };
    return promise;
  }, [report]);

  return { connect, status: state.status, connection: state.connection, error: state.error };
}
