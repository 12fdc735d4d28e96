'use client';
import { ConnectButton } from '@authpipe/react';
import { useEffect, useState } from 'react';

interface ConnectionState {
  connected: boolean;
  account?: { name: string | null } | null;
}

export default function Home() {
  const [state, setState] = useState<ConnectionState | null>(null);
  const [error, setError] = useState<string | null>(null);
  const refresh = () => fetch('/api/connection').then((r) => r.json()).then(setState);
  useEffect(() => void refresh(), []);

  return (
    <main>
      <h1>Your CRM</h1>
      <p id="status">{state === null ? 'Loading…' : state.connected ? `Connected to ${state.account?.name ?? 'Attio'}` : 'Not connected'}</p>
      <ConnectButton
        provider="attio"
        getSessionToken={() => fetch('/api/connect-session', { method: 'POST' }).then((r) => r.json()).then((s) => s.token)}
        onSuccess={() => void refresh()}
        onError={(err) => setError(`${err.code}: ${err.message}`)}
      />
      {error && <p role="alert">{error}</p>}
    </main>
  );
}
