// The official TypeScript SDK client connecting to @cyanheads/git-mcp-server, direct or through scopegate, as any
// user of that server connects: initialize, notifications/initialized, tools/list, then one read-only call.
// Usage: node git_client.mjs URL REPO_PATH [BEARER]. Prints one JSON object; exits 1 on error.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, repo, bearer] = process.argv.slice(2);
const requestInit = bearer ? { headers: { Authorization: `Bearer ${bearer}` } } : {};
const client = new Client({ name: "scopegate-git-test", version: "1.0.0" }, { capabilities: {} });
await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit }));
const tools = (await client.listTools()).tools.map((tool) => tool.name).sort();
const status = await client.callTool({ name: "git_status", arguments: { path: repo } });
await client.close();
console.log(JSON.stringify({ tools, status: { isError: status.isError ?? false, content: status.content } }));
