// The official TypeScript SDK client with a URL-mode elicitation handler, through scopegate, for a write a named
// person approves on scopegate's approval page. The handler stands in for "open this link": it prints the link
// (`URL <link>`) for the test, which has the approver decide in its place, and answers "accept" (it opened it).
// Two calls: the test approves the first and declines the second. Prints `RESULT <json>` at the end.
// Usage: node approval_client.mjs PROXY_URL BEARER
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ElicitRequestSchema, ElicitationCompleteNotificationSchema } from "@modelcontextprotocol/sdk/types.js";

const [url, bearer] = process.argv.slice(2);
const client = new Client({ name: "scopegate-ts-approval", version: "1.0.0" },
  { capabilities: { elicitation: { url: {} } } });
const shown = [];
const completed = [];
client.setRequestHandler(ElicitRequestSchema, async (request) => {
  shown.push({ mode: request.params.mode, url: request.params.url, id: request.params.elicitationId });
  console.log(`URL ${request.params.url}`);
  return { action: "accept" };
});
client.setNotificationHandler(ElicitationCompleteNotificationSchema, async (notification) => {
  completed.push(notification.params.elicitationId);
});
await client.connect(new StreamableHTTPClientTransport(new URL(url),
  { requestInit: { headers: { Authorization: `Bearer ${bearer}` } } }));
await client.listTools();
const entry = { workspaceId: "acme", date: "2026-10-31", memo: "from ts",
  lines: [{ account: "6000", debit: 5 }, { account: "1000", credit: 5 }] };
const approved = await client.callTool({ name: "create_journal_entry", arguments: entry });
const declined = await client.callTool({ name: "create_journal_entry", arguments: { ...entry, memo: "declined" } });
await client.close();
console.log("RESULT " + JSON.stringify({
  approved: { isError: approved.isError ?? false, structured: approved.structuredContent },
  declined: { isError: declined.isError ?? false, text: declined.content[0].text },
  shown, completed,
}));
