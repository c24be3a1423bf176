"""An MCP server with what the official conformance suite's server scenarios ask for (the tools, prompts and
resources each scenario names in its description: `npx @modelcontextprotocol/conformance list --server`), built
here with the SDK's low-level `Server` so every answer is exactly what the scenario describes.

The suite's npm package ships no server of its own (its "everything" server lives in the suite's repository, as do
the SDKs' own, and none is published to a registry), so this one is written from the scenarios' text."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import wave
import zlib
from typing import Any

import mcp.types as types
from mcp.server.lowlevel import Server


def _png() -> bytes:
    """A 1x1 red pixel, built here: the scenarios check only type, MIME type and that the data is base64."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
            + chunk(b"IEND", b""))


def _wav() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(8000)
        clip.writeframes(b"\x00\x00" * 8)
    return out.getvalue()


PNG = base64.b64encode(_png()).decode()
WAV = base64.b64encode(_wav()).decode()

NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}


def _tool(name: str, description: str, schema: dict[str, Any] | None = None) -> types.Tool:
    return types.Tool(name=name, description=description, input_schema=schema or NO_ARGUMENTS)


def _string_arguments(*names: str) -> dict[str, Any]:
    return {"type": "object", "properties": {n: {"type": "string"} for n in names}, "required": list(names)}


TOOLS = [
    _tool("test_simple_text", "Answers one text block."),
    _tool("test_image_content", "Answers one PNG image."),
    _tool("test_audio_content", "Answers one WAV clip."),
    _tool("test_embedded_resource", "Answers an embedded text resource."),
    _tool("test_multiple_content_types", "Answers text, an image and an embedded resource."),
    _tool("test_tool_with_logging", "Logs three messages while it runs."),
    _tool("test_error_handling", "Always fails (isError)."),
    _tool("test_tool_with_progress", "Reports progress 0, 50 and 100 of 100."),
    _tool("test_sampling", "Asks the client's model.", _string_arguments("prompt")),
    _tool("test_elicitation", "Asks the client's person.", _string_arguments("message")),
    _tool("test_elicitation_sep1034_defaults", "Asks with a default for every primitive type."),
    _tool("test_elicitation_sep1330_enums", "Asks with every enum form."),
    _tool("test_reconnection", "Closes its SSE stream before it answers, so the client resumes."),
    _tool("json_schema_2020_12_tool", "Tool with JSON Schema 2020-12 features", {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {"address": {"type": "object",
                              "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
        "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
        "additionalProperties": False,
    }),
]

SEP1034_SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "default": "John Doe"},
    "age": {"type": "integer", "default": 30},
    "score": {"type": "number", "default": 95.5},
    "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
    "verified": {"type": "boolean", "default": True},
}}
SEP1330_SCHEMA = {"type": "object", "properties": {
    "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
    "titledSingle": {"type": "string", "oneOf": [{"const": "value1", "title": "First Option"},
                                                 {"const": "value2", "title": "Second Option"},
                                                 {"const": "value3", "title": "Third Option"}]},
    "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                   "enumNames": ["Option One", "Option Two", "Option Three"]},
    "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
    "titledMulti": {"type": "array", "items": {"anyOf": [{"const": "value1", "title": "First Choice"},
                                                         {"const": "value2", "title": "Second Choice"},
                                                         {"const": "value3", "title": "Third Choice"}]}},
}}
LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def _embedded(uri: str, text: str, mime: str = "text/plain") -> types.EmbeddedResource:
    return types.EmbeddedResource(type="resource",
                                  resource=types.TextResourceContents(uri=uri, mime_type=mime, text=text))


def build_conformance_server() -> Server:
    level = {"now": "debug"}
    subscribed: set[str] = set()

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def log(ctx: Any, message: str) -> None:
        if LEVELS.index("info") >= LEVELS.index(level["now"]):
            await ctx.session.send_log_message(level="info", data=message, logger="conformance",
                                               related_request_id=ctx.request_id)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        name, arguments = params.name, params.arguments or {}
        content: list[Any]
        if name == "test_simple_text":
            content = [_text("This is a simple text response for testing.")]
        elif name == "test_image_content":
            content = [types.ImageContent(type="image", data=PNG, mime_type="image/png")]
        elif name == "test_audio_content":
            content = [types.AudioContent(type="audio", data=WAV, mime_type="audio/wav")]
        elif name == "test_embedded_resource":
            content = [_embedded("test://embedded-resource", "This is an embedded resource content.")]
        elif name == "test_multiple_content_types":
            content = [_text("Multiple content types test:"),
                       types.ImageContent(type="image", data=PNG, mime_type="image/png"),
                       _embedded("test://mixed-content-resource", json.dumps({"test": "data", "value": 123}),
                                 "application/json")]
        elif name == "test_tool_with_logging":
            for step, message in enumerate(("Tool execution started", "Tool processing data",
                                            "Tool execution completed")):
                if step:
                    await asyncio.sleep(0.05)
                await log(ctx, message)
            content = [_text("Logged three messages.")]
        elif name == "test_error_handling":
            return types.CallToolResult(content=[_text("This tool intentionally returns an error for testing")],
                                        is_error=True)
        elif name == "test_tool_with_progress":
            for done in (0, 50, 100):
                if done:
                    await asyncio.sleep(0.05)
                await ctx.session.report_progress(done, 100)
            content = [_text("Progress reported.")]
        elif name == "test_sampling":
            # Asked on the session's standalone GET stream, as the suite's own reference server asks (its
            # `server.request` names no related request); the SEP-1034/1330 elicitations below ride the call's
            # stream, so both routes are exercised.
            answer = await ctx.session.create_message(
                [types.SamplingMessage(role="user", content=_text(str(arguments.get("prompt", ""))))],
                max_tokens=100, related_request_id=None)
            said = answer.content.text if isinstance(answer.content, types.TextContent) else str(answer.content)
            content = [_text(f"LLM response: {said}")]
        elif name in ("test_elicitation", "test_elicitation_sep1034_defaults", "test_elicitation_sep1330_enums"):
            schema = {"test_elicitation": {"type": "object", "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"}},
                "required": ["username", "email"]},
                "test_elicitation_sep1034_defaults": SEP1034_SCHEMA,
                "test_elicitation_sep1330_enums": SEP1330_SCHEMA}[name]
            on_get = name == "test_elicitation"  # on the GET stream, as the reference server asks (see above)
            answer = await ctx.session.elicit_form(str(arguments.get("message", "Please answer.")), schema,
                                                   related_request_id=None if on_get else ctx.request_id)
            content = [_text(f"Elicitation completed: action={answer.action}, content={json.dumps(answer.content)}")]
        elif name == "test_reconnection":
            await asyncio.sleep(0.05)
            if ctx.close_sse_stream is not None:  # the client must come back with Last-Event-ID for the answer
                await ctx.close_sse_stream()
            await asyncio.sleep(0.2)
            content = [_text("Reconnection test completed successfully")]
        elif name == "json_schema_2020_12_tool":
            content = [_text(json.dumps(arguments))]
        else:
            return types.CallToolResult(content=[_text(f"Unknown tool: {name}")], is_error=True)
        return types.CallToolResult(content=content)

    async def list_resources(ctx: Any, params: Any) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[
            types.Resource(uri="test://static-text", name="static-text", description="A fixed text.",
                           mime_type="text/plain"),
            types.Resource(uri="test://static-binary", name="static-binary", description="A fixed PNG.",
                           mime_type="image/png"),
            types.Resource(uri="test://watched-resource", name="watched-resource",
                           description="A resource to subscribe to.", mime_type="text/plain"),
        ])

    async def list_templates(ctx: Any, params: Any) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[
            types.ResourceTemplate(uri_template="test://template/{id}/data", name="template-data",
                                   description="Data for an id.", mime_type="application/json")])

    async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        contents: list[Any]
        if uri == "test://static-text":
            contents = [types.TextResourceContents(uri=uri, mime_type="text/plain",
                                                   text="This is the content of the static text resource.")]
        elif uri == "test://static-binary":
            contents = [types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG)]
        elif uri == "test://watched-resource":
            contents = [types.TextResourceContents(uri=uri, mime_type="text/plain", text="Watched.")]
        elif uri.startswith("test://template/") and uri.endswith("/data"):
            item = uri.removeprefix("test://template/").removesuffix("/data")
            contents = [types.TextResourceContents(uri=uri, mime_type="application/json", text=json.dumps(
                {"id": item, "templateTest": True, "data": f"Data for ID: {item}"}, separators=(",", ":")))]
        else:
            raise ValueError(f"unknown resource {uri}")
        return types.ReadResourceResult(contents=contents)

    async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        subscribed.add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        subscribed.discard(str(params.uri))
        return types.EmptyResult()

    async def list_prompts(ctx: Any, params: Any) -> types.ListPromptsResult:
        def argument(name: str, description: str) -> types.PromptArgument:
            return types.PromptArgument(name=name, description=description, required=True)

        return types.ListPromptsResult(prompts=[
            types.Prompt(name="test_simple_prompt", description="A prompt without arguments."),
            types.Prompt(name="test_prompt_with_arguments", description="A prompt with two arguments.",
                         arguments=[argument("arg1", "First test argument"),
                                    argument("arg2", "Second test argument")]),
            types.Prompt(name="test_prompt_with_embedded_resource", description="A prompt embedding a resource.",
                         arguments=[argument("resourceUri", "URI of the resource to embed")]),
            types.Prompt(name="test_prompt_with_image", description="A prompt with an image."),
        ])

    async def get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        arguments = params.arguments or {}

        def user(content: Any) -> types.PromptMessage:
            return types.PromptMessage(role="user", content=content)

        if params.name == "test_simple_prompt":
            messages = [user(_text("This is a simple prompt for testing."))]
        elif params.name == "test_prompt_with_arguments":
            messages = [user(_text(f"Prompt with arguments: arg1='{arguments.get('arg1')}', "
                                   f"arg2='{arguments.get('arg2')}'"))]
        elif params.name == "test_prompt_with_embedded_resource":
            messages = [user(_embedded(arguments.get("resourceUri", "test://example-resource"),
                                       "Embedded resource content for testing.")),
                        user(_text("Please process the embedded resource above."))]
        elif params.name == "test_prompt_with_image":
            messages = [user(types.ImageContent(type="image", data=PNG, mime_type="image/png")),
                        user(_text("Please analyze the image above."))]
        else:
            raise ValueError(f"unknown prompt {params.name}")
        return types.GetPromptResult(messages=messages)

    async def complete(ctx: Any, params: types.CompleteRequestParams) -> types.CompleteResult:
        typed = params.argument.value
        values = [word for word in ("paris", "park", "party") if word.startswith(typed)]
        return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))

    async def set_level(ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
        level["now"] = params.level
        return types.EmptyResult()

    return Server("scopegate-conformance-upstream", version="1.0.0", on_list_tools=list_tools,
                  on_call_tool=call_tool, on_list_resources=list_resources,
                  on_list_resource_templates=list_templates, on_read_resource=read_resource,
                  on_subscribe_resource=subscribe, on_unsubscribe_resource=unsubscribe,
                  on_list_prompts=list_prompts, on_get_prompt=get_prompt, on_completion=complete,
                  on_set_logging_level=set_level)
