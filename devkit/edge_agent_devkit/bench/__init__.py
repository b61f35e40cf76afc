"""Benchmarks of edge-agent on its real code paths.

`python -m edge_agent_devkit.bench` (or `scripts/bench`) runs the audio part (`audio.py`,
in-process: ALSA rig + PyAudio, openWakeWord, webrtcvad, AEC3, JitterBuffer) and the
system part (`system.py`: the daemon and the Live session layer against the emulator),
merges them (`report.py`), prints a table and writes `bench/results.json`.

Each part exposes `run(quick: bool = False) -> dict` with "results", "baselines",
"errors" and "notes"; a figure that could not be measured is None plus an error that
says why, never a made-up number.
"""
