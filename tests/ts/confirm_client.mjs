// The official TypeScript SDK client through scopegate: a token preview on a tool with an outputSchema (then the
// confirmation), a task-augmented held write (callToolStream), and a write a person approves (elicitation).
// Usage: node confirm_client.mjs TOKEN_PROXY_URL HUMAN_PROXY_URL BEARER. Prints one JSON object; exits 1 on error.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CallToolResultSchema, ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const [tokenUrl, humanUrl, bearer] = process.argv.slice(2);
const headers = { Authorization: `Bearer ${bearer}` };

async function connect(url, capabilities = {}) {
  const client = new Client({ name: "scopegate-ts-test", version: "1.0.0" }, { capabilities });
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } }));
  await client.listTools(); // the client learns each tool's outputSchema here, and checks results against it
  return client;
}

const out = {};
const tokens = await connect(tokenUrl);
const args = { customer: "TS Co", amount: 42 };
const preview = await tokens.callTool({ name: "create_invoice", arguments: args });
out.preview = preview.structuredContent;
const done = await tokens.callTool({
  name: "create_invoice",
  arguments: { ...args, confirmationToken: preview.structuredContent.confirmationToken },
});
out.done = done.structuredContent;

const held = { customer: "Task Co", amount: 7 };
out.stream = [];
for await (const message of tokens.experimental.tasks.callToolStream(
  { name: "create_invoice", arguments: held }, CallToolResultSchema, { task: { ttl: 60000 } })) {
  if (message.type === "error") throw message.error;
  out.stream.push(message.type === "result" ? { type: "result", result: message.result.structuredContent }
    : { type: message.type, status: message.task.status });
}
await tokens.close();

const shown = [];
const person = await connect(humanUrl, { elicitation: { form: {} } });
person.setRequestHandler(ElicitRequestSchema, async (request) => {
  shown.push(request.params.message);
  return { action: "accept", content: { approve: true } };
});
const approved = await person.callTool({ name: "void_invoice", arguments: { number: 1 } });
out.approved = { isError: approved.isError ?? false, structured: approved.structuredContent, shown };
await person.close();

console.log(JSON.stringify(out));
