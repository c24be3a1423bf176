// The official TypeScript SDK client through scopegate, in front of a stdio server scopegate runs as a child
// process: the list as a reader and as a writer sees it, a write held for confirmation, then confirmed.
// Usage: node stdio_client.mjs PROXY_URL WRITER_BEARER READER_BEARER TARGET_FILE. Prints one JSON object.
import { existsSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, writerToken, readerToken, target] = process.argv.slice(2);

async function connect(bearer) {
  const client = new Client({ name: "scopegate-ts-stdio-test", version: "1.0.0" }, { capabilities: {} });
  const headers = { Authorization: `Bearer ${bearer}` };
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } }));
  return client;
}

const out = {};
const reader = await connect(readerToken);
out.reader_tools = (await reader.listTools()).tools.map((tool) => tool.name);
await reader.close();

const writer = await connect(writerToken);
out.writer_tools = (await writer.listTools()).tools.map((tool) => tool.name);
const args = { path: target, content: "written by the TypeScript SDK" };
const preview = await writer.callTool({ name: "write_file", arguments: args });
out.preview = preview.structuredContent;
out.held_exists = existsSync(target);
const done = await writer.callTool({
  name: "write_file",
  arguments: { ...args, confirmationToken: preview.structuredContent.confirmationToken },
});
out.done = { isError: done.isError ?? false };
await writer.close();

console.log(JSON.stringify(out));
