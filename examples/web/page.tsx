// The demo app's page: a signed-in user connects Attio with <ConnectButton>, then sees the
// connection as the server holds it. The events panel shows exactly what the callbacks got.
import { useCallback, useEffect, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { ConnectButton, type Connection, type ConnectError } from '@authpipe/react';

declare global {
  interface Window {
    DEMO: { userId: string; tenantId: string; sandbox: boolean };
  }
}

interface Row {
  provider: string;
  status: string;
  workspace: string | null;
  scopes: string[];
  createdAt: string;
  getCredentialNs: number | null;
}

type Event = { name: 'onSuccess'; payload: Connection } | { name: 'onError'; payload: { code: string; message: string } } | { name: 'onClose'; payload: null };

/** The app's own route mints a connect session for the signed-in user, per attempt. */
async function getSessionToken(): Promise<string> {
  const res = await fetch('/api/connect-session', { method: 'POST' });
  if (!res.ok) throw new Error(`connect-session answered ${res.status}`);
  return ((await res.json()) as { token: string }).token;
}

function formatNs(ns: number | null): string {
  if (ns === null) return '—';
  return ns < 1000 ? `${ns.toFixed(0)} ns` : `${(ns / 1000).toFixed(1)} µs`;
}

function App() {
  const { userId, tenantId, sandbox } = window.DEMO;
  const [rows, setRows] = useState<Row[] | null>(null);
  const [events, setEvents] = useState<Event[]>([]);
  const [mode, setMode] = useState<'popup' | 'redirect'>('popup');

  const refresh = useCallback(async () => {
    const res = await fetch('/api/connections');
    setRows(((await res.json()) as { connections: Row[] }).connections);
  }, []);
  useEffect(() => void refresh(), [refresh]);
  const log = (event: Event) => setEvents((all) => [event, ...all]);

  const onSuccess = (connection: Connection) => {
    log({ name: 'onSuccess', payload: connection });
    void refresh();
  };
  const onError = (error: ConnectError) => log({ name: 'onError', payload: { code: error.code, message: error.message } });
  const onClose = () => log({ name: 'onClose', payload: null });
  const disconnect = async () => {
    await fetch('/api/disconnect', { method: 'POST' });
    await refresh();
  };

  return (
    <>
      <header>
        <strong>Acme Sync</strong>
        <span className="muted" style={{ color: '#c9cfdb' }}>
          signed in as <code>{userId}</code> in <code>{tenantId}</code>
        </span>
      </header>
      <main>
        <section>
          <h2>Connect your CRM</h2>
          <p className="muted">
            {sandbox ? 'Attio is emulated on this machine (the Attio sandbox): nothing leaves it.' : 'Connecting to the real Attio.'} The button opens
            Attio's consent page; the connection lands in Authpipe's encrypted store, and this page only ever sees its metadata.
          </p>
          <p>
            <ConnectButton className="connect" provider="attio" mode={mode} getSessionToken={getSessionToken} onSuccess={onSuccess} onError={onError} onClose={onClose} />{' '}
            <label className="muted">
              <input type="checkbox" checked={mode === 'redirect'} onChange={(e) => setMode(e.target.checked ? 'redirect' : 'popup')} /> full-page redirect instead of a popup
            </label>
          </p>
        </section>
        <section>
          <h2>Your connections</h2>
          {rows === null ? (
            <p className="muted">Loading…</p>
          ) : rows.length === 0 ? (
            <p className="muted" id="no-connections">
              No connection yet.
            </p>
          ) : (
            <table id="connections">
              <thead>
                <tr>
                  <th>Provider</th>
                  <th>Workspace</th>
                  <th>Status</th>
                  <th>Scopes</th>
                  <th title={'mean of 1,000 awaited calls, measured on the server'}>getCredential (server)</th>
                  <th />
                </tr>
              </thead>
              <tbody>
                {rows.map((row) => (
                  <tr key={row.provider} data-provider={row.provider}>
                    <td>{row.provider}</td>
                    <td className="workspace">{row.workspace ?? '—'}</td>
                    <td>
                      <span className={`status ${row.status}`}>{row.status}</span>
                    </td>
                    <td className="muted">{row.scopes.length} granted</td>
                    <td className="latency">{formatNs(row.getCredentialNs)}</td>
                    <td>
                      <button className="link" onClick={() => void disconnect()}>
                        Disconnect
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </section>
        <section>
          <h2>What the callbacks received</h2>
          {events.length === 0 ? (
            <p className="muted">Nothing yet.</p>
          ) : (
            <pre id="events">{events.map((e) => `${e.name}(${e.payload === null ? '' : JSON.stringify(e.payload, null, 1).replace(/\n\s*/g, ' ')})`).join('\n')}</pre>
          )}
        </section>
      </main>
    </>
  );
}

createRoot(document.getElementById('root')!).render(<App />);
