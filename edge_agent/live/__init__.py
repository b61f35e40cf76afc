"""Gemini Live session layer: connection manager, connect config, resumption handles, tools."""
