// The app's one Authpipe instance (server only). With ATTIO_CLIENT_ID and ATTIO_CLIENT_SECRET it
// connects real Attio; without them, the offline Attio sandbox stands in, so the example runs as
// cloned. Kept on globalThis so `next dev` reloads reuse it instead of opening the store again.
import { Authpipe } from '@authpipe/node';
import { createSandbox } from '@authpipe/node/testing';

export const appOrigin = process.env.APP_ORIGIN ?? 'http://127.0.0.1:3000';
const redirectUri = `${appOrigin}/authpipe/callback/attio`;

async function open(): Promise<Authpipe> {
  const { ATTIO_CLIENT_ID: clientId, ATTIO_CLIENT_SECRET: clientSecret } = process.env;
  const attio = clientId && clientSecret ? { clientId, clientSecret, redirectUri } : (await createSandbox({ provider: 'attio', consentPage: true })).providerConfig({ redirectUri });
  return new Authpipe({
    store: process.env.AUTHPIPE_STORE ?? (clientId ? undefined : ':memory:'),
    masterKey: process.env.AUTHPIPE_MASTER_KEY,
    providers: { attio },
  });
}

const shared = globalThis as typeof globalThis & { authpipe?: Promise<Authpipe> };
export function getAuthpipe(): Promise<Authpipe> {
  return (shared.authpipe ??= open());
}

/** The signed-in user. A real app reads its own session here. */
export function currentUser() {
  return { tenantId: 'org_acme', userId: 'user_123' };
}
