// The official TypeScript SDK's OAuth client through scopegate's own authorization server: discovery from the 401,
// RFC 7591 registration, PKCE, token, MCP calls, then a refresh (rotation) after the access token stops working.
// Usage: node oauth_client.mjs MCP_URL REDIRECT_URI. Prints {"authorize": URL}, reads the code from stdin, then
// prints one JSON object with what happened; exits 1 on error.
import readline from "node:readline";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";

const [url, redirectUri] = process.argv.slice(2);
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

class MemoryProvider {
  get redirectUrl() { return redirectUri; }
  get clientMetadata() {
    return { client_name: "TS Assistant", redirect_uris: [redirectUri], token_endpoint_auth_method: "none",
             grant_types: ["authorization_code", "refresh_token"], response_types: ["code"] };
  }
  state() { return "ts-state"; }
  clientInformation() { return this.client; }
  saveClientInformation(client) { this.client = client; }
  tokens() { return this.saved; }
  saveTokens(tokens) { this.saved = tokens; }
  redirectToAuthorization(authorizationUrl) { console.log(JSON.stringify({ authorize: authorizationUrl.toString() })); }
  saveCodeVerifier(verifier) { this.verifier = verifier; }
  codeVerifier() { return this.verifier; }
}

const provider = new MemoryProvider();
const client = new Client({ name: "scopegate-ts-oauth-test", version: "1.0.0" });
let transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
try {
  await client.connect(transport);
} catch (error) {
  if (!(error instanceof UnauthorizedError)) throw error;
  const { value: code } = await lines.next();
  await transport.finishAuth(code.trim());
  transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
  await client.connect(transport);
}
const out = { clientId: provider.client.client_id, tools: (await client.listTools()).tools.map((t) => t.name) };
out.first = provider.saved;
provider.saved = { ...provider.saved, access_token: "no-longer-valid" }; // as if expired: the next call refreshes
out.afterRefresh = (await client.callTool({ name: "list_accounts", arguments: { workspaceId: "acme" } })).isError;
out.second = provider.saved;
await client.close();
console.log(JSON.stringify(out));
process.exit(0);
