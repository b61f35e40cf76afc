"""edge-agent's development kit: everything that runs the appliance without hardware.

Never installed on a Pi and never imported by the runtime package `edge_agent`:

- `emulator`: a local Gemini Live API emulator over TLS (driven by the real google-genai SDK),
- `rig`: the ALSA file/FIFO rig for real PyAudio, speech synthesis (espeak-ng), simulated
  rooms, and `Appliance`, which runs the real `edge-agent run` against the emulator,
- `demo`: the offline demo (`scripts/demo`),
- `bench`: the benchmarks (`scripts/bench`).
"""
