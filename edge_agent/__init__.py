"""edge-agent: a headless Gemini Live voice appliance for the Raspberry Pi."""

__version__ = "0.1.0"
