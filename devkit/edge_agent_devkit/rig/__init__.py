"""Helpers for tests, the demo and benchmarks: synthetic speech, simulated rooms
(:mod:`.speech`) and a sound-card-free ALSA rig for real PyAudio (:mod:`.alsa_rig`)."""
