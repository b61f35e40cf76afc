"""The daemon: wires the core, the audio pipeline, the Live session and the devices."""
