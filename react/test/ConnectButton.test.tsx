/** @jest-environment jsdom */
import { act, fireEvent, render, screen } from '@testing-library/react';
import { version } from 'react';
import { ConnectButton, ConnectError } from '../src';
import { captureFormSubmits, connection, fakeWindowOpen, postMessageFrom, type FakePopup } from './fakes';

declare const EXPECTED_REACT_MAJOR: string;
const ORIGIN = window.location.origin;

afterEach(() => {
  jest.restoreAllMocks();
  jest.useRealTimers();
  window.sessionStorage.clear();
  window.history.replaceState(null, '', '/');
});

/** The flow id the attempt sent to the handler (in the POSTed form, or the popup's GET URL). */
function flowOf(submitted: ReturnType<typeof captureFormSubmits>, popup?: FakePopup | null): string {
  const flow = submitted.at(-1)?.fields.flow ?? new URL(popup?.location.href ?? 'about:blank').searchParams.get('flow');
  if (!flow) throw new Error('the attempt sent no flow id');
  return flow;
}

/** Lets the attempt's promise chain (token, then navigation) run. */
const settle = () => act(async () => {});

test(`runs on React ${EXPECTED_REACT_MAJOR}`, () => {
  expect(version.split('.')[0]).toBe(EXPECTED_REACT_MAJOR);
});

describe('the button', () => {
  test('is a real button named after the provider, passing through what a <button> takes', () => {
    render(<ConnectButton provider="attio" className="primary" style={{ color: 'red' }} aria-describedby="help" />);
    const button = screen.getByRole('button', { name: 'Connect Attio' });
    expect(button.tagName).toBe('BUTTON');
    expect(button.getAttribute('type')).toBe('button'); // never submits a surrounding form
    expect(button.className).toBe('primary');
    expect(button.style.color).toBe('red');
    expect(button.getAttribute('aria-describedby')).toBe('help');
    expect(button.getAttribute('aria-busy')).toBe('false');
    expect(button.dataset.status).toBe('idle');
  });

  test('takes its text from children, and other providers from their display names', () => {
    render(
      <>
        <ConnectButton provider="attio">Link your CRM</ConnectButton>
        <ConnectButton provider="zoho" />
        <ConnectButton provider="acme_crm" />
      </>,
    );
    expect(screen.getByRole('button', { name: 'Link your CRM' })).toBeTruthy();
    expect(screen.getByRole('button', { name: 'Connect Zoho CRM' })).toBeTruthy();
    expect(screen.getByRole('button', { name: 'Connect Acme crm' })).toBeTruthy();
  });

  test('disabled: a click starts nothing', () => {
    const opened = fakeWindowOpen();
    render(<ConnectButton provider="attio" sessionToken="tok" disabled />);
    fireEvent.click(screen.getByRole('button'));
    expect(opened).toHaveLength(0);
  });

  test('an onClick that calls preventDefault stops the attempt; otherwise it runs first', () => {
    const opened = fakeWindowOpen();
    captureFormSubmits();
    const { rerender } = render(<ConnectButton provider="attio" sessionToken="tok" onClick={(e) => e.preventDefault()} />);
    fireEvent.click(screen.getByRole('button'));
    expect(opened).toHaveLength(0);
    const onClick = jest.fn();
    rerender(<ConnectButton provider="attio" sessionToken="tok" onClick={onClick} />);
    fireEvent.click(screen.getByRole('button'));
    expect(onClick).toHaveBeenCalledTimes(1);
    expect(opened).toHaveLength(1);
  });

  test('forwards its ref', () => {
    const ref = { current: null as HTMLButtonElement | null };
    render(<ConnectButton provider="attio" ref={ref} />);
    expect(ref.current).toBe(screen.getByRole('button'));
  });
});

describe('popup mode', () => {
  test('opens a centred blank popup during the click, POSTs the session to it, and reports the connection', async () => {
    const opened = fakeWindowOpen();
    const submitted = captureFormSubmits();
    const onSuccess = jest.fn();
    render(<ConnectButton provider="attio" sessionToken="tok_1" onSuccess={onSuccess} />);
    const button = screen.getByRole('button');
    fireEvent.click(button);

    expect(opened).toHaveLength(1);
    expect(opened[0]).toMatchObject({ url: 'about:blank' });
    expect(opened[0]!.features).toMatch(/^popup=yes,width=500,height=720,left=\d+,top=\d+$/);
    expect(opened[0]!.popup!.document.body.textContent).toBe('Connecting to Attio…');
    await settle();
    // The token travels in a form body, not in a URL.
    expect(submitted).toEqual([
      { method: 'post', action: `${ORIGIN}/authpipe/connect/attio`, target: opened[0]!.name, fields: { session: 'tok_1', flow: expect.stringMatching(/^[A-Za-z0-9_-]{22}$/), mode: 'popup' } },
    ]);
    // The popup's name, which the provider's pages can read, is not the flow id.
    expect(opened[0]!.name).not.toContain(submitted[0]!.fields.flow);
    expect(button.getAttribute('aria-busy')).toBe('true');
    expect(button.dataset.status).toBe('connecting');

    await act(async () => postMessageFrom(opened[0]!.popup, ORIGIN, { type: 'authpipe:connect', ok: true, connection, flowId: flowOf(submitted) }));
    expect(onSuccess).toHaveBeenCalledWith(connection);
    expect(button.dataset.status).toBe('connected');
    expect(button.getAttribute('aria-busy')).toBe('false');
    expect(document.activeElement).toBe(button);
  });

  test('ignores messages from another origin, another window, or with another flow id', async () => {
    const opened = fakeWindowOpen();
    const submitted = captureFormSubmits();
    const onSuccess = jest.fn();
    const onError = jest.fn();
    render(<ConnectButton provider="attio" sessionToken="tok" onSuccess={onSuccess} onError={onError} />);
    fireEvent.click(screen.getByRole('button'));
    await settle();
    const popup = opened[0]!.popup;
    const flowId = flowOf(submitted);
    const good = { type: 'authpipe:connect', ok: true, connection, flowId };
    await act(async () => {
      postMessageFrom(popup, 'https://evil.example', good);
      postMessageFrom(window, ORIGIN, good);
      postMessageFrom(popup, ORIGIN, { ...good, flowId: 'A'.repeat(22) });
      postMessageFrom(popup, ORIGIN, { type: 'authpipe:connect', ok: true, connection }); // the old shape, without flowId
      postMessageFrom(popup, ORIGIN, { type: 'authpipe:connect', ok: true, connection: { provider: 'attio' }, flowId }); // malformed
      postMessageFrom(popup, ORIGIN, 'authpipe:connect');
    });
    expect(onSuccess).not.toHaveBeenCalled();
    expect(onError).not.toHaveBeenCalled();
    expect(screen.getByRole('button').dataset.status).toBe('connecting');
    await act(async () => postMessageFrom(popup, ORIGIN, good));
    expect(onSuccess).toHaveBeenCalledTimes(1);
  });

  test('an error from the handler reaches onError with its code, and status is error', async () => {
    const opened = fakeWindowOpen();
    const submitted = captureFormSubmits();
    const onError = jest.fn();
    render(<ConnectButton provider="attio" sessionToken="tok" onError={onError} />);
    fireEvent.click(screen.getByRole('button'));
    await settle();
    const error = { code: 'AUTHORIZATION_DENIED', message: 'The authorization was declined. You can connect again.' };
    await act(async () => postMessageFrom(opened[0]!.popup, ORIGIN, { type: 'authpipe:connect', ok: false, error, flowId: flowOf(submitted) }));
    expect(onError).toHaveBeenCalledTimes(1);
    const reported = onError.mock.calls[0][0];
    expect(reported).toBeInstanceOf(ConnectError);
    expect(reported).toMatchObject(error);
    expect(screen.getByRole('button').dataset.status).toBe('error');
  });

  test('a popup closed by the user is onClose within 500 ms, not an error, and focus returns to the button', async () => {
    jest.useFakeTimers();
    const opened = fakeWindowOpen();
    captureFormSubmits();
    const onClose = jest.fn();
    const onError = jest.fn();
    render(<ConnectButton provider="attio" sessionToken="tok" onClose={onClose} onError={onError} />);
    const button = screen.getByRole('button');
    fireEvent.click(button);
    await settle();
    button.blur();
    opened[0]!.popup!.close();
    await act(async () => void jest.advanceTimersByTime(500));
    expect(onClose).toHaveBeenCalledTimes(1);
    expect(onError).not.toHaveBeenCalled();
    expect(button.dataset.status).toBe('idle');
    expect(document.activeElement).toBe(button);
  });

  test('a second click while the popup is open focuses it instead of opening another', async () => {
    const opened = fakeWindowOpen();
    captureFormSubmits();
    render(<ConnectButton provider="attio" sessionToken="tok" />);
    fireEvent.click(screen.getByRole('button'));
    await settle();
    fireEvent.click(screen.getByRole('button'));
    expect(opened).toHaveLength(1);
    expect(opened[0]!.popup!.focused).toBe(1);
  });

  test('getSessionToken is called on click, after the popup opened; its failure is SESSION_INVALID and closes the popup', async () => {
    const opened = fakeWindowOpen();
    const submitted = captureFormSubmits();
    let resolveToken!: (token: string) => void;
    const getSessionToken = jest.fn(() => new Promise<string>((resolve) => (resolveToken = resolve)));
    render(<ConnectButton provider="attio" getSessionToken={getSessionToken} />);
    fireEvent.click(screen.getByRole('button'));
    expect(opened).toHaveLength(1); // before the token exists
    expect(getSessionToken).toHaveBeenCalledTimes(1);
    await settle();
    expect(submitted).toHaveLength(0);
    await act(async () => resolveToken('tok_late'));
    expect(submitted[0]!.fields.session).toBe('tok_late');

    // A failing getSessionToken, on the next attempt.
    const onError = jest.fn();
    const failing = () => Promise.reject(new Error('backend down'));
    render(<ConnectButton provider="hubspot" getSessionToken={failing} onError={onError} />);
    fireEvent.click(screen.getByRole('button', { name: 'Connect HubSpot' }));
    await settle();
    expect(onError.mock.calls[0][0]).toMatchObject({ code: 'SESSION_INVALID', message: 'getSessionToken() failed: backend down' });
    expect(opened[1]!.popup!.closed).toBe(true);
  });

  test('without a session token the popup GETs the handler (the app cookie decides who connects)', async () => {
    const opened = fakeWindowOpen();
    const submitted = captureFormSubmits();
    render(<ConnectButton provider="attio" baseUrl="https://auth.example.com/authpipe/" />);
    fireEvent.click(screen.getByRole('button'));
    await settle();
    expect(submitted).toHaveLength(0);
    const url = new URL(opened[0]!.popup!.location.href);
    expect(url.origin + url.pathname).toBe('https://auth.example.com/authpipe/connect/attio');
    expect(Object.fromEntries(url.searchParams)).toEqual({ flow: expect.any(String), mode: 'popup' });
  });

  test('a handler on another origin: only messages from that origin count', async () => {
    const opened = fakeWindowOpen();
    const submitted = captureFormSubmits();
    const onSuccess = jest.fn();
    render(<ConnectButton provider="attio" sessionToken="tok" baseUrl="https://auth.example.com/authpipe" onSuccess={onSuccess} />);
    fireEvent.click(screen.getByRole('button'));
    await settle();
    expect(submitted[0]!.action).toBe('https://auth.example.com/authpipe/connect/attio');
    const message = { type: 'authpipe:connect', ok: true, connection, flowId: flowOf(submitted) };
    await act(async () => postMessageFrom(opened[0]!.popup, ORIGIN, message));
    expect(onSuccess).not.toHaveBeenCalled();
    await act(async () => postMessageFrom(opened[0]!.popup, 'https://auth.example.com', message));
    expect(onSuccess).toHaveBeenCalledTimes(1);
  });
});

describe('what an attempt survives', () => {
  test('the component unmounting: the popup stays open, and the outcome still reaches onSuccess', async () => {
    const opened = fakeWindowOpen();
    const submitted = captureFormSubmits();
    const onSuccess = jest.fn();
    const { unmount } = render(<ConnectButton provider="attio" sessionToken="tok" onSuccess={onSuccess} />);
    fireEvent.click(screen.getByRole('button'));
    await settle();
    unmount();
    expect(opened[0]!.popup!.closed).toBe(false);
    await act(async () => postMessageFrom(opened[0]!.popup, ORIGIN, { type: 'authpipe:connect', ok: true, connection, flowId: flowOf(submitted) }));
    expect(onSuccess).toHaveBeenCalledWith(connection);
  });

  test('a covered window: focus coming back checks the popup at once', async () => {
    jest.useFakeTimers();
    const opened = fakeWindowOpen();
    captureFormSubmits();
    const onClose = jest.fn();
    render(<ConnectButton provider="attio" sessionToken="tok" onClose={onClose} />);
    fireEvent.click(screen.getByRole('button'));
    await settle();
    opened[0]!.popup!.close();
    await act(async () => void jest.advanceTimersByTime(200)); // seen closed once
    expect(onClose).not.toHaveBeenCalled();
    await act(async () => void window.dispatchEvent(new Event('focus')));
    expect(onClose).toHaveBeenCalledTimes(1);
  });

  test('a baseUrl that is not a URL: INVALID_ARGUMENT, and no window opens', async () => {
    const opened = fakeWindowOpen();
    const onError = jest.fn();
    render(<ConnectButton provider="attio" sessionToken="tok" baseUrl="http://[::1" onError={onError} />);
    fireEvent.click(screen.getByRole('button'));
    await settle();
    expect(opened).toHaveLength(0);
    expect(onError.mock.calls[0][0]).toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});

describe('redirect mode', () => {
  test('a blocked popup falls back to a full-page POST, remembering the flow in this tab', async () => {
    fakeWindowOpen({ blocked: true });
    const submitted = captureFormSubmits();
    render(<ConnectButton provider="attio" sessionToken="tok" />);
    fireEvent.click(screen.getByRole('button'));
    await settle();
    expect(submitted).toEqual([{ method: 'post', action: `${ORIGIN}/authpipe/connect/attio`, target: '_self', fields: { session: 'tok', flow: expect.any(String), mode: 'redirect' } }]);
    expect(window.sessionStorage.getItem('authpipe:flow:attio')).toBe(submitted[0]!.fields.flow);
  });

  test("mode='redirect' never opens a popup", async () => {
    const opened = fakeWindowOpen();
    const submitted = captureFormSubmits();
    render(<ConnectButton provider="attio" sessionToken="tok" mode="redirect" />);
    fireEvent.click(screen.getByRole('button'));
    await settle();
    expect(opened).toHaveLength(0);
    expect(submitted[0]!.target).toBe('_self');
  });

  test('a failed getSessionToken keeps the page, forgets the flow, and is onError', async () => {
    const submitted = captureFormSubmits();
    const onError = jest.fn();
    render(<ConnectButton provider="attio" mode="redirect" getSessionToken={() => Promise.reject(new Error('down'))} onError={onError} />);
    fireEvent.click(screen.getByRole('button'));
    await settle();
    expect(submitted).toHaveLength(0);
    expect(onError.mock.calls[0][0]).toMatchObject({ code: 'SESSION_INVALID' });
    expect(window.sessionStorage.getItem('authpipe:flow:attio')).toBeNull();
  });

  test('back from the provider through the back/forward cache: the button is idle again, and starts anew', async () => {
    const submitted = captureFormSubmits();
    render(<ConnectButton provider="attio" sessionToken="tok" mode="redirect" />);
    const button = screen.getByRole('button');
    fireEvent.click(button);
    await settle();
    expect(button.dataset.status).toBe('connecting');
    await act(async () => void window.dispatchEvent(new PageTransitionEvent('pageshow', { persisted: true })));
    expect(button.dataset.status).toBe('idle');
    fireEvent.click(button);
    await settle();
    expect(submitted).toHaveLength(2);
    expect(submitted[1]!.fields.flow).not.toBe(submitted[0]!.fields.flow);
  });

  test('the return page reports the outcome once and takes it out of the address bar', async () => {
    window.sessionStorage.setItem('authpipe:flow:attio', 'flow_aaaaaaaaaaaaaaaa');
    const query = new URLSearchParams({ tab: 'crm', authpipe: 'connected', authpipe_flow: 'flow_aaaaaaaaaaaaaaaa', authpipe_connection: JSON.stringify(connection) });
    window.history.replaceState(null, '', `/settings?${query}`);
    const onSuccess = jest.fn();
    const { unmount } = render(<ConnectButton provider="attio" onSuccess={onSuccess} />);
    await settle();
    expect(onSuccess).toHaveBeenCalledWith(connection);
    expect(window.location.pathname + window.location.search).toBe('/settings?tab=crm');
    expect(screen.getByRole('button').dataset.status).toBe('connected');
    unmount();
    render(<ConnectButton provider="attio" onSuccess={onSuccess} />);
    await settle();
    expect(onSuccess).toHaveBeenCalledTimes(1);
  });

  test('the return page reports an error with its code', async () => {
    window.sessionStorage.setItem('authpipe:flow:attio', 'flow_bbbbbbbbbbbbbbbb');
    window.history.replaceState(null, '', '/settings?authpipe=error&authpipe_flow=flow_bbbbbbbbbbbbbbbb&authpipe_error=AUTHORIZATION_DENIED&authpipe_message=Declined');
    const onError = jest.fn();
    render(<ConnectButton provider="attio" onError={onError} />);
    await settle();
    expect(onError.mock.calls[0][0]).toMatchObject({ code: 'AUTHORIZATION_DENIED', message: 'Declined' });
    expect(window.location.search).toBe('');
  });

  test('a crafted link, with no flow this tab started, reports nothing', async () => {
    const query = new URLSearchParams({ authpipe: 'connected', authpipe_flow: 'flow_cccccccccccccccc', authpipe_connection: JSON.stringify(connection) });
    window.history.replaceState(null, '', `/settings?${query}`);
    const onSuccess = jest.fn();
    render(<ConnectButton provider="attio" onSuccess={onSuccess} />);
    await settle();
    expect(onSuccess).not.toHaveBeenCalled();
    // Another provider's hook on the page does not take attio's outcome either.
    window.sessionStorage.setItem('authpipe:flow:attio', 'flow_cccccccccccccccc');
    render(<ConnectButton provider="hubspot" onSuccess={onSuccess} />);
    await settle();
    expect(onSuccess).not.toHaveBeenCalled();
  });
});
