// A real OpenID Connect provider (npm oidc-provider, a certified implementation) for the sign-in tests.
// node provider.mjs PORT REDIRECT_URI CLIENT_SECRET: serves http://127.0.0.1:PORT on loopback only, prints "ready".
// Accounts: any login name; groups come from the table below. Development interactions (login form, consent).
import Provider from 'oidc-provider';

const [port, redirectUri, secret] = process.argv.slice(2);
const GROUPS = { alice: ['accountants'], victor: ['viewers'], nobody: ['marketing'], mallory: ['accountants'] };
const UNVERIFIED = new Set(['mallory']); // typed an address the provider never checked

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: 'scopegate',
    client_secret: secret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  scopes: ['openid', 'email', 'groups'],
  conformIdTokenClaims: false, // the requested claims go into the ID token itself
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        const email = UNVERIFIED.has(id) ? 'alice@example.test' : `${id}@example.test`;
        return { sub: id, email, email_verified: !UNVERIFIED.has(id), groups: GROUPS[id] || [] };
      },
    };
  },
});
provider.proxy = false;
provider.listen(Number(port), '127.0.0.1', () => console.log('ready'));
