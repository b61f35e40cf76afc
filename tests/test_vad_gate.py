"""VAD gate: pure behaviour with a fake classifier, then webrtcvad on espeak-ng speech.

Driven as the ears drive it: the stream is cut into frames, each classified once, and
fed with its capture sample position to `VadGate.process_frame`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest

from edge_agent.audio.vad import WebRtcVad
from edge_agent.core.events import SpeechEnded, SpeechEndReason, SpeechStarted, UplinkAudio
from edge_agent.core.vad_gate import VadGate, VadGateConfig
from edge_agent_devkit.rig import speech

RATE = 16000


def ms(n: float) -> int:
    return round(n * RATE / 1000)


def loud_is_speech(frame: np.ndarray) -> bool:
    """Fake classifier: a frame is speech when it has any non-zero sample."""
    return bool(np.any(frame))


def signal(*segments: tuple[str, float]) -> np.ndarray:
    """("s", ms) = speech (a ramp of non-zero samples, distinct per sample), ("q", ms) = zeros."""
    out = []
    for kind, dur in segments:
        n = ms(dur)
        if kind == "s":
            out.append((np.arange(n) % 2000 + 1).astype(np.int16))
        else:
            out.append(np.zeros(n, dtype=np.int16))
    return np.concatenate(out)


def run(
    gate: VadGate,
    audio: np.ndarray,
    start: int = 0,
    is_speech: Callable[[np.ndarray], bool] = loud_is_speech,
) -> list:
    """Frame `audio` (whose first sample is capture sample `start`), classify each frame
    and gate it; a trailing partial frame is left out, as the ears keep it for later."""
    fs = gate.config.frame_samples
    events = []
    for i in range(0, audio.size - fs + 1, fs):
        frame = audio[i : i + fs]
        events += gate.process_frame(frame, start + i, is_speech(frame))
    return events


def uplinked(events: list) -> list[tuple[int, bytes]]:
    """Merge contiguous UplinkAudio into (start, pcm) stretches; assert they never overlap."""
    stretches: list[tuple[int, bytes]] = []
    for ev in events:
        if not isinstance(ev, UplinkAudio):
            continue
        if stretches and stretches[-1][0] + len(stretches[-1][1]) // 2 == ev.start_sample:
            stretches[-1] = (stretches[-1][0], stretches[-1][1] + ev.pcm)
        else:
            if stretches:
                assert ev.start_sample > stretches[-1][0] + len(stretches[-1][1]) // 2
            stretches.append((ev.start_sample, ev.pcm))
    return stretches


CFG = VadGateConfig(
    frame_ms=30, pre_roll_ms=300, speech_start_ms=90, speech_end_ms=300, max_utterance_s=10
)


def test_pre_roll_start_and_end_positions_and_exact_audio() -> None:
    audio = signal(("q", 990), ("s", 600), ("q", 990))
    gate = VadGate(CFG)
    events = run(gate, audio)
    kinds = [type(e) for e in events if not isinstance(e, UplinkAudio)]
    assert kinds == [SpeechStarted, SpeechEnded]
    started = next(e for e in events if isinstance(e, SpeechStarted))
    ended = next(e for e in events if isinstance(e, SpeechEnded))
    assert started.sample == ms(990)
    assert ended.sample == ms(1590)
    assert ended.reason is SpeechEndReason.SILENCE
    [(start, pcm)] = uplinked(events)
    # Pre-roll (300 ms) + speech + hangover (300 ms), byte-exact copy of the input.
    assert start == ms(990 - 300)
    assert len(pcm) // 2 == ms(300 + 600 + 300)
    assert pcm == audio[start : start + len(pcm) // 2].tobytes()
    # The SpeechEnded event comes after all of the utterance's audio.
    assert isinstance(events[-1], SpeechEnded)
    assert gate.bytes_seen == audio.nbytes
    assert gate.bytes_passed == len(pcm)
    assert not gate.is_open


def test_short_blips_do_not_open_the_gate() -> None:
    # 60 ms bursts (2 frames) never reach the 90 ms (3 frames) start requirement.
    audio = signal(*[seg for _ in range(10) for seg in (("q", 300), ("s", 60))], ("q", 300))
    gate = VadGate(CFG)
    assert run(gate, audio) == []
    assert gate.bytes_passed == 0
    assert gate.bytes_seen == audio.nbytes


def test_pause_shorter_than_hangover_keeps_one_utterance() -> None:
    audio = signal(("q", 600), ("s", 300), ("q", 240), ("s", 300), ("q", 600))
    events = run(VadGate(CFG), audio)
    assert [type(e) for e in events if not isinstance(e, UplinkAudio)] == [
        SpeechStarted,
        SpeechEnded,
    ]
    assert len(uplinked(events)) == 1


def test_pause_longer_than_hangover_splits_and_pre_roll_never_repeats_audio() -> None:
    audio = signal(("q", 600), ("s", 300), ("q", 450), ("s", 300), ("q", 600))
    gate = VadGate(CFG)
    events = run(gate, audio)
    marks = [e for e in events if not isinstance(e, UplinkAudio)]
    assert [type(e) for e in marks] == [SpeechStarted, SpeechEnded, SpeechStarted, SpeechEnded]
    assert marks[2].sample == ms(600 + 300 + 450)
    stretches = uplinked(events)  # asserts no overlap
    total = sum(len(p) for _, p in stretches)
    assert gate.bytes_passed == total
    # Everything between the utterances was sent exactly once (hangover + pre-roll cover it).
    first_start = stretches[0][0]
    last_end = stretches[-1][0] + len(stretches[-1][1]) // 2
    assert total // 2 == last_end - first_start
    joined = b"".join(p for _, p in stretches)
    assert joined == audio[first_start:last_end].tobytes()


def test_max_utterance_cuts_and_rearms_only_after_silence() -> None:
    cfg = VadGateConfig(
        frame_ms=30, pre_roll_ms=90, speech_start_ms=90, speech_end_ms=300, max_utterance_s=1.0
    )
    audio = signal(("q", 300), ("s", 3000), ("q", 600), ("s", 300), ("q", 600))
    events = run(VadGate(cfg), audio)
    marks = [e for e in events if not isinstance(e, UplinkAudio)]
    assert [type(e) for e in marks] == [SpeechStarted, SpeechEnded, SpeechStarted, SpeechEnded]
    assert marks[0].sample == ms(300)
    assert marks[1].reason is SpeechEndReason.MAX_LENGTH
    # Cut at the end of the frame in which the utterance reached 1 s (34 frames of 30 ms).
    assert marks[1].sample == ms(300) + 34 * cfg.frame_samples
    # The rest of the 3 s of speech did not start a new utterance; the next words did.
    assert marks[2].sample == ms(300 + 3000 + 600)
    assert marks[3].reason is SpeechEndReason.SILENCE


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_frame_sizes_and_positions_from_the_stream(frame_ms: int) -> None:
    """Block sizes are the ears' business (tests/test_ears.py); the gate takes frames."""
    cfg = VadGateConfig(frame_ms=frame_ms, pre_roll_ms=120, speech_start_ms=60, speech_end_ms=240)
    audio = signal(("q", 600), ("s", 480), ("q", 600))
    gate = VadGate(cfg)
    events = run(gate, audio, start=5000)
    marks = [e for e in events if not isinstance(e, UplinkAudio)]
    assert [type(e) for e in marks] == [SpeechStarted, SpeechEnded]
    assert marks[0].sample == 5000 + ms(600)
    assert marks[1].sample == 5000 + ms(1080)
    [(start, pcm)] = uplinked(events)
    assert start == 5000 + ms(600 - 120)
    assert len(pcm) // 2 == ms(120 + 480 + 240)
    assert pcm == audio[start - 5000 : start - 5000 + len(pcm) // 2].tobytes()


def test_stricter_start_requirement_per_frame() -> None:
    """process_frame(start_frames=...) demands a longer run (used while the device plays)."""
    audio = signal(("q", 600), ("s", 150), ("q", 600), ("s", 450), ("q", 600))
    gate = VadGate(CFG, max_start_frames=10)
    fs = CFG.frame_samples
    events = []
    for i in range(0, audio.size - fs + 1, fs):
        f = audio[i : i + fs]
        events += gate.process_frame(f, i, loud_is_speech(f), start_frames=10)
    marks = [e for e in events if not isinstance(e, UplinkAudio)]
    # The 150 ms burst is ignored; the 450 ms one opens after 300 ms, dated at its onset.
    assert [type(e) for e in marks] == [SpeechStarted, SpeechEnded]
    assert marks[0].sample == ms(600 + 150 + 600)
    [(start, _pcm)] = uplinked(events)
    assert start == ms(600 + 150 + 600 - 300)  # the pre-roll still reaches back 300 ms
    # Overrides are capped at max_start_frames (the ring is sized for it).
    capped = VadGate(CFG)
    burst = [
        e
        for i in range(0, ms(300), fs)
        for e in capped.process_frame(np.ones(fs, np.int16), i, True, start_frames=50)
    ]
    assert isinstance(burst[0], SpeechStarted)


def test_pre_roll_is_clipped_at_the_start_of_the_stream() -> None:
    audio = signal(("q", 90), ("s", 300), ("q", 600))
    [(start, _pcm)] = uplinked(run(VadGate(CFG), audio))
    assert start == 0


def test_reset_floor_keeps_earlier_audio_out() -> None:
    audio = signal(("s", 600), ("q", 600))
    gate = VadGate(CFG)
    gate.reset(floor_sample=ms(300))
    events = run(gate, audio)
    started = next(e for e in events if isinstance(e, SpeechStarted))
    [(start, _pcm)] = uplinked(events)
    assert started.sample == ms(300)
    assert start == ms(300)


def test_a_window_lead_reaches_back_to_the_floor_for_the_first_utterance_only() -> None:
    """After reset(floor, lead) the first utterance goes up from up to `lead` before its
    onset run (not before the floor); the next one has the plain pre-roll."""
    audio = signal(("q", 900), ("s", 300), ("q", 900), ("s", 300), ("q", 600))
    gate = VadGate(CFG, max_lead_samples=ms(1500))
    gate.reset(floor_sample=ms(150), lead_samples=ms(1500))
    first, second = uplinked(run(gate, audio))
    assert first[0] == ms(150)  # the floor: the onset (900 ms) is within the lead
    assert first[1] == audio[ms(150) : ms(900 + 300 + 300)].tobytes()
    assert second[0] == ms(2100 - 300)  # the pre-roll again
    gate.reset(floor_sample=0, lead_samples=ms(1200))
    [(start, _pcm)] = uplinked(run(gate, signal(("q", 3000), ("s", 300), ("q", 600))))
    assert start == ms(3000 - 1200)  # a longer pause stays local beyond the lead
    with pytest.raises(ValueError, match="exceeds"):
        gate.reset(lead_samples=ms(1600))


def test_frames_of_the_wrong_size_are_refused() -> None:
    gate = VadGate(CFG)
    for n in (0, 100, CFG.frame_samples + 1):
        with pytest.raises(ValueError):
            gate.process_frame(np.zeros(n, np.int16), 0, True)
    assert gate.bytes_seen == 0


def test_positions_follow_the_stream_across_a_jump() -> None:
    """Time is the capture sample position the caller gives: after a gap in capture the
    events carry the new positions, and an utterance in progress is cut by the silence
    count, not by the jump."""
    gate = VadGate(CFG)
    events = run(gate, signal(("q", 300), ("s", 300)), start=0)
    assert [type(e) for e in events if not isinstance(e, UplinkAudio)] == [SpeechStarted]
    events = run(gate, signal(("q", 600)), start=50_000)
    marks = [e for e in events if not isinstance(e, UplinkAudio)]
    assert marks == [SpeechEnded(ms(600), SpeechEndReason.SILENCE)]
    [(start, _pcm)] = uplinked(events)
    assert start == 50_000  # the hangover audio is dated where it was captured
    events = run(gate, signal(("s", 300), ("q", 600)), start=90_000)
    assert next(e for e in events if isinstance(e, SpeechStarted)).sample == 90_000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frame_ms": 25},
        {"pre_roll_ms": -1},
        {"speech_end_ms": -5},
        {"max_utterance_s": 0},
        {"sample_rate_hz": 16001},
    ],
)
def test_invalid_config(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        VadGateConfig(**kwargs)


# -- webrtcvad adapter -------------------------------------------------------


def test_webrtcvad_adapter_validates_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError):
        WebRtcVad(mode=4)
    with pytest.raises(ValueError):
        WebRtcVad(sample_rate_hz=22050)
    vad = WebRtcVad(mode=3, warmup_ms=0)
    assert vad.is_speech(np.zeros(480, dtype=np.int16)) is False
    assert vad.is_speech(bytes(320)) is False  # 10 ms as bytes
    with caplog.at_level(logging.WARNING):
        assert vad.is_speech(np.zeros(100, dtype=np.int16)) is False
        assert vad.is_speech(np.zeros(100, dtype=np.int16)) is False
    assert sum("not 10/20/30 ms" in r.getMessage() for r in caplog.records) == 1
    assert vad.frames == 2


def test_webrtcvad_warmup_hides_the_fresh_instance_false_alarm() -> None:
    """A fresh webrtcvad calls the first frames of room noise speech; the adapter hides that."""
    noise = speech.to_int16(speech.add_noise(np.zeros(RATE), -60.0, np.random.default_rng(1)))
    frames = [noise[i : i + 480] for i in range(0, RATE - 479, 480)]
    raw = WebRtcVad(mode=2, warmup_ms=0)
    assert any(raw.is_speech(f) for f in frames[:5])  # the quirk this works around
    warm = WebRtcVad(mode=2)
    assert not any(warm.is_speech(f) for f in frames)
    assert warm.frames == len(frames)


# -- real speech ---------------------------------------------------------------

needs_espeak = pytest.mark.skipif(not speech.espeak_available(), reason="espeak-ng missing")

REAL_CASES = [
    ("Please turn on the kitchen lights.", "en-us", 160),
    ("What is the weather like tomorrow?", "en-gb", 140),
    ("Set a timer for ten minutes.", "en+f3", 180),
    ("Tell me a short story about a cat.", "en-us+m7", 190),
]


@needs_espeak
@pytest.mark.parametrize(("text", "voice", "speed"), REAL_CASES)
def test_webrtcvad_gate_on_speech_keeps_all_speech_and_little_silence(
    text: str, voice: str, speed: int
) -> None:
    """Speech between 3 and 4 s of room noise: all speech goes up, < 20 % of the silence.

    The gate sends 300 ms pre-roll + 800 ms hangover per utterance (the config
    defaults), so the share of silence sent depends on how much there is.
    """
    words = speech.trim(speech.synthesize(text, voice=voice, speed_wpm=speed))
    lead, tail = speech.silence(3.0), speech.silence(4.0)
    clean = speech.concat(lead, words, tail)
    rng = np.random.default_rng(7)
    audio = speech.to_int16(speech.add_noise(clean, -60.0, rng))
    speech_start, speech_end = lead.size, lead.size + words.size

    cfg = VadGateConfig(frame_ms=30, pre_roll_ms=300, speech_start_ms=90, speech_end_ms=800)
    gate = VadGate(cfg)
    events = run(gate, audio, is_speech=WebRtcVad(mode=2).is_speech)
    stretches = uplinked(events)
    assert stretches, "the gate never opened on speech"
    sent = np.zeros(audio.size, dtype=bool)
    for start, pcm in stretches:
        n = len(pcm) // 2
        assert pcm == audio[start : start + n].tobytes()
        sent[start : start + n] = True

    active = np.flatnonzero(np.abs(clean) > 300)  # every audible speech sample
    assert sent[active].all(), f"{np.count_nonzero(~sent[active])} speech samples not uplinked"
    # Pre-roll: the uplink starts before the first syllable.
    assert stretches[0][0] <= speech_start - ms(100)
    silence_mask = np.ones(audio.size, dtype=bool)
    silence_mask[speech_start:speech_end] = False
    silence_sent = np.count_nonzero(sent & silence_mask) / np.count_nonzero(silence_mask)
    assert silence_sent < 0.20, f"{silence_sent:.0%} of the silence was uplinked"
    marks = [e for e in events if not isinstance(e, UplinkAudio)]
    assert isinstance(marks[0], SpeechStarted)
    assert isinstance(marks[-1], SpeechEnded)
    assert gate.bytes_seen == audio.size // cfg.frame_samples * cfg.frame_samples * 2
    assert gate.bytes_passed == sum(len(p) for _, p in stretches)
