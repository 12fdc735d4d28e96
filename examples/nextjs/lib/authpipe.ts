// The app's one Authpipe instance (server only). With ATTIO_CLIENT_ID and ATTIO_CLIENT_SECRET it
// connects real Attio; without them, the offline Attio sandbox stands in, so the example runs as
// cloned. OIDC_ISSUER (with OIDC_CLIENT_ID and OIDC_CLIENT_SECRET) adds any OpenID Connect or
// OAuth 2 server as a second provider, `oidc`: its endpoints are discovered from the issuer.
// Kept on globalThis so `next dev` reloads reuse it instead of opening the store again.
import { Authpipe, type ProviderConfig } from '@authpipe/node';
import { createSandbox } from '@authpipe/node/testing';

export const appOrigin = process.env.APP_ORIGIN ?? 'http://127.0.0.1:3000';
const callback = (provider: string) => `${appOrigin}/authpipe/callback/${provider}`;

async function open(): Promise<Authpipe> {
  const env = process.env;
  const providers: Record<string, ProviderConfig> = {
    attio:
      env.ATTIO_CLIENT_ID && env.ATTIO_CLIENT_SECRET
        ? { clientId: env.ATTIO_CLIENT_ID, clientSecret: env.ATTIO_CLIENT_SECRET, redirectUri: callback('attio') }
        : (await createSandbox({ provider: 'attio', consentPage: true })).providerConfig({ redirectUri: callback('attio') }),
  };
  if (env.OIDC_ISSUER) {
    providers.oidc = { issuer: env.OIDC_ISSUER, clientId: env.OIDC_CLIENT_ID, clientSecret: env.OIDC_CLIENT_SECRET, redirectUri: callback('oidc'), scopes: env.OIDC_SCOPES?.split(' ') };
  }
  return new Authpipe({
    store: env.AUTHPIPE_STORE ?? (env.ATTIO_CLIENT_ID && env.ATTIO_CLIENT_SECRET ? undefined : ':memory:'),
    masterKey: env.AUTHPIPE_MASTER_KEY,
    providers,
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
