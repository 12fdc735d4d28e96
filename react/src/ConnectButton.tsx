import { forwardRef, useCallback, useRef, type ButtonHTMLAttributes, type MouseEvent, type ReactNode } from 'react';
import { providerDisplayName } from './providers.js';
import { useConnect, type UseConnectOptions } from './useConnect.js';

/** Props of {@link ConnectButton}: {@link UseConnectOptions}, and anything a `<button>` takes. */
export interface ConnectButtonProps extends UseConnectOptions, Omit<ButtonHTMLAttributes<HTMLButtonElement>, 'onError'> {
  /** The button's content; default "Connect Attio" (the provider's display name). */
  children?: ReactNode;
}

/**
 * A button that connects the user's account at `provider`: it opens the provider's consent page
 * in a popup and calls `onSuccess` with the stored connection's metadata (never a token).
 * `aria-busy` while connecting; a second click brings the open popup to the front; focus comes
 * back to the button when the popup closes. `data-status` carries the {@link ConnectStatus} for
 * styling. A click handler that calls `event.preventDefault()` stops the attempt.
 *
 * @example
 * <ConnectButton
 *   provider="attio"
 *   getSessionToken={() => fetch('/api/connect-session', { method: 'POST' }).then((r) => r.json()).then((b) => b.token)}
 *   onSuccess={(connection) => console.log('Connected!', connection)}
 * />
 */
export const ConnectButton = forwardRef<HTMLButtonElement, ConnectButtonProps>(function ConnectButton(props, forwardedRef) {
  const { provider, sessionToken, getSessionToken, baseUrl, mode, onSuccess, onError, onClose, children, onClick, type, ...button } = props;
  const { connect, status } = useConnect({ provider, sessionToken, getSessionToken, baseUrl, mode, onSuccess, onError, onClose });
  const own = useRef<HTMLButtonElement | null>(null);
  const ref = useCallback(
    (node: HTMLButtonElement | null) => {
      own.current = node;
      if (typeof forwardedRef === 'function') forwardedRef(node);
      else if (forwardedRef) forwardedRef.current = node;
    },
    [forwardedRef],
  );

  const handleClick = (event: MouseEvent<HTMLButtonElement>) => {
    onClick?.(event);
    if (event.defaultPrevented) return;
    // Outcomes reach onSuccess / onError / onClose; the promise only tells when to refocus.
    connect().then(
      () => own.current?.focus(),
      () => own.current?.focus(),
    );
  };

  return (
    <button {...button} ref={ref} type={type ?? 'button'} aria-busy={status === 'connecting'} data-status={status} onClick={handleClick}>
      {children ?? `Connect ${providerDisplayName(provider)}`}
    </button>
  );
});
