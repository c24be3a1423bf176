// The official TypeScript SDK client, declaring sampling, calling server-everything's trigger-sampling-request (a
// tool the server lists only to clients that declare sampling) through scopegate: the call is a write under
// `default: annotations` (readOnlyHint: false), so a preview first, then the confirmed call, during which the
// server asks this client to sample. Usage: node sampling_client.mjs URL BEARER. Prints one JSON object.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CreateMessageRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const [url, bearer] = process.argv.slice(2);
const client = new Client({ name: "scopegate-sampling-test", version: "1.0.0" }, { capabilities: { sampling: {} } });
const asked = [];
client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
  asked.push(request.params.messages[0].content.text);
  return { role: "assistant", content: { type: "text", text: "sampled by the test" }, model: "test-model",
           stopReason: "endTurn" };
});
await client.connect(new StreamableHTTPClientTransport(new URL(url),
  { requestInit: { headers: { Authorization: `Bearer ${bearer}` } } }));
const out = { tools: (await client.listTools()).tools.map((tool) => tool.name), asked };
const args = { prompt: "hello from the test", maxTokens: 10 };
try {
  const preview = await client.callTool({ name: "trigger-sampling-request", arguments: args });
  out.preview = preview.structuredContent ?? preview.content;
  const token = preview.structuredContent?.confirmationToken;
  if (token) {
    const done = await client.callTool({ name: "trigger-sampling-request",
                                         arguments: { ...args, confirmationToken: token } });
    out.done = done.content.map((item) => item.text).join("\n");
  }
} catch (error) {
  out.refused = String(error.message ?? error);
}
await client.close();
console.log(JSON.stringify(out));
