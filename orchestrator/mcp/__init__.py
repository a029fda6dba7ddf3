"""The MCP door: the coordination protocol as tools of a Model Context Protocol server,
for agents that run elsewhere (coding agents, other frameworks). An edge, like the
HTTP API: it validates, calls one core service or selector per tool, and shapes the
answer. asgi.py mounts it at ``/mcp/``; server.py builds it on the official SDK;
tools.py says what each tool does; docs/mcp.md tells users how to connect."""
