// The ConnectButton asks here for a short-lived token that names the signed-in user's tenant.
import { currentUser, getAuthpipe } from '../../../lib/authpipe';

export async function POST(): Promise<Response> {
  const authpipe = await getAuthpipe();
  return Response.json(await authpipe.createConnectSession(currentUser()));
}
