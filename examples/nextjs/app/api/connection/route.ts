// What the server knows about the user's connection (`?provider=`, default attio): metadata, and
// whether a credential is served. The credential itself goes to the provider's API, never to the
// browser.
import { AuthpipeError } from '@authpipe/node';
import { currentUser, getAuthpipe } from '../../../lib/authpipe';

export const dynamic = 'force-dynamic';

export async function GET(request: Request): Promise<Response> {
  const authpipe = await getAuthpipe();
  const ref = { provider: new URL(request.url).searchParams.get('provider') ?? 'attio', ...currentUser() };
  try {
    const { type, expiresAt } = await authpipe.getCredential(ref);
    const connection = await authpipe.getConnection(ref);
    return Response.json({ connected: true, account: connection.account, status: connection.status, credential: { type, expiresAt } });
  } catch (err) {
    if (err instanceof AuthpipeError && err.code === 'CONNECTION_NOT_FOUND') return Response.json({ connected: false });
    throw err;
  }
}
