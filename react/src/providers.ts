/**
 * Display names of @authpipe/node's built-in providers, for the button's default text ("Connect
 * Attio"). Kept equal to `builtin.json`'s `displayName` by a test in @authpipe/node.
 */
export const PROVIDER_NAMES: Readonly<Record<string, string>> = {
  attio: 'Attio',
  hubspot: 'HubSpot',
  salesforce: 'Salesforce',
  pipedrive: 'Pipedrive',
  zoho: 'Zoho CRM',
  dynamics365: 'Microsoft Dynamics 365',
  close: 'Close',
  copper: 'Copper',
};

/** A provider's name for people: the built-in's, or the id with a capital (`acme_crm` -> "Acme crm"). */
export function providerDisplayName(provider: string): string {
  return PROVIDER_NAMES[provider] ?? (provider.charAt(0).toUpperCase() + provider.slice(1)).replace(/[_-]+/g, ' ');
}
