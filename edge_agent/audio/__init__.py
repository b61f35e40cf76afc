"""Audio device and DSP adapters."""
