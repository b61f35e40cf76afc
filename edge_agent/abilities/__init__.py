"""What the model can do besides talking: timers, volume, device status, MCP tool servers,
local command tools, and the transcript history.

Each module builds ``edge_agent.live.tools.Tool`` objects (a declaration and its
implementation) or a small service the daemon drives; decisions that depend on time are
pure functions with the time passed in. ``mcp_tools`` imports the ``mcp`` package only when
an MCP server is configured.
"""
