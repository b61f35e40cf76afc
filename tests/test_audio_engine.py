"""AudioEngine and StreamResampler over real PyAudio/PortAudio on the ALSA rig."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
import soxr

from edge_agent.audio.capture import reaches_grid
from edge_agent.audio.engine import AudioEngine, EngineState
from edge_agent.audio.resample import FirDecimator, StreamResampler, resample_all
from edge_agent_devkit.rig.alsa_rig import AlsaRig
from edge_agent_devkit.rig.waiting import wait_until as wait_for

pytestmark = pytest.mark.timeout(60)

WAIT_S = 10.0  # generous: the machine is shared and slow


class Collector:
    """on_block stand-in for the daemon: keeps blocks (up to a cap) from the audio thread."""

    def __init__(self, cap_samples: int = 10**7) -> None:
        self.mic: list[np.ndarray] = []
        self.ref: list[np.ndarray | None] = []
        self.pos: list[int] = []
        self.cap = cap_samples
        self.samples = 0
        self.lock = threading.Lock()

    def __call__(self, mic: np.ndarray, ref: np.ndarray | None, pos: int) -> None:
        with self.lock:
            if self.samples >= self.cap:
                return
            self.mic.append(mic)
            self.ref.append(ref)
            self.pos.append(pos)
            self.samples += len(mic)

    def mic_all(self) -> np.ndarray:
        with self.lock:
            return np.concatenate(self.mic) if self.mic else np.zeros(0, np.int16)

    def ref_all(self) -> np.ndarray:
        with self.lock:
            return np.concatenate([r for r in self.ref if r is not None])


class Source:
    """output_source stand-in (the daemon's jitter buffer + cues): plays a clip once."""

    def __init__(self, clip: np.ndarray | None = None) -> None:
        self.clip = clip if clip is not None else np.zeros(0, np.int16)
        self.pos = 0
        self.calls = 0
        self.armed = threading.Event()

    def __call__(self, n: int) -> np.ndarray:
        self.calls += 1
        out = np.zeros(n, np.int16)
        if self.armed.is_set():
            part = self.clip[self.pos : self.pos + n]
            out[: len(part)] = part
            self.pos += len(part)
        return out

    def play(self, clip: np.ndarray) -> None:
        """Start another clip (a new reply) from its beginning."""
        self.armed.clear()
        self.clip, self.pos = clip, 0
        self.armed.set()


@pytest.fixture
def rig(tmp_path):
    rig = AlsaRig(tmp_path / "rig")
    yield rig
    rig.stop()


@pytest.fixture
def engines():
    made: list[AudioEngine] = []
    yield made
    for engine in made:
        engine.stop()


def noise(n: int, seed: int, level: float = 4000.0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(n) * level
    x = np.clip(x, -32000, 32000).astype(np.int16)
    x[x == 0] = 1  # no digital zeros: lets the tests find where the clip starts
    return x


def tone(freq: float, rate: int, seconds: float, amp: float = 10000.0) -> np.ndarray:
    n = int(rate * seconds)
    t = np.arange(n) / rate
    env = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no click by design
    return np.round(amp * env * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def first_nonzero(x: np.ndarray) -> int:
    nz = np.flatnonzero(x)
    assert len(nz), "no audio at all"
    return int(nz[0])


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


# ------------------------------------------------------------------------ resampler


def test_resampler_silence_in_silence_out_and_passthrough():
    rs = StreamResampler(24000, 48000)
    out = np.concatenate([rs.process(np.zeros(240, np.int16)) for _ in range(20)])
    assert len(out) > 0 and not out.any()  # no dither: the echo reference needs true zeros
    same = StreamResampler(16000, 16000)
    x = noise(1000, 1)
    assert same.passthrough and np.array_equal(same.process(x), x)


def test_resampler_streaming_has_no_clicks_and_keeps_pitch_and_length():
    x = tone(440, 48000, 1.0)
    rs = StreamResampler(48000, 16000)
    sizes = [480, 7, 1000, 333, 480]  # odd chunk edges on purpose
    chunks, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        chunks.append(rs.process(x[i : i + n]))
        i, k = i + n, k + 1
    y = np.concatenate([*chunks, rs.flush()])
    assert abs(len(y) - 16000) <= 2
    assert abs(dominant_hz(y, 16000) - 440) < 2
    max_step = 2 * np.pi * 440 * 10000 / 16000  # steepest a 440 Hz sine can be
    assert np.abs(np.diff(y.astype(np.int32))).max() < 1.1 * max_step
    # Same as one-shot resampling, apart from rounding.
    ref = resample_all(x, 48000, 16000)
    n = min(len(ref), len(y))
    assert np.abs(ref[:n].astype(np.int32) - y[:n]).max() <= 2


def _soxr_every_chunk(x: np.ndarray, in_rate: int, out_rate: int, chunk: int) -> np.ndarray:
    """What the resampler gave before it skipped silence: its engine (soxr, or the FIR for a
    whole-number downsampling ratio) sees every chunk, zeros too."""
    stream: Any
    if in_rate % out_rate == 0:
        stream = FirDecimator(in_rate // out_rate, out_rate)
    else:
        stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ", vr=True)
    out = [
        np.clip(np.rint(stream.resample_chunk(x[i : i + chunk].astype(np.float32))), -32768, 32767)
        for i in range(0, len(x), chunk)
    ]
    return np.concatenate(out).astype(np.int16)


@pytest.mark.parametrize(
    ("in_rate", "out_rate", "skips"),
    [
        (24000, 48000, True),
        (24000, 16000, True),
        (24000, 32000, True),
        (24000, 96000, True),
        (48000, 16000, True),
        (32000, 16000, True),
        (96000, 16000, True),
        (24000, 44100, False),  # soxr's phase is not exactly periodic there: never skips
        (44100, 16000, False),
    ],
)
def test_resampler_skips_silence_without_changing_a_sample(in_rate, out_rate, skips):
    """Bursts between silences of every length, 10 ms chunks as the callbacks give them:
    skipping quiet stretches leaves every output sample and every count as soxr's own."""
    rng = np.random.default_rng(in_rate + out_rate)
    parts = []
    for _ in range(10):
        parts.append(np.zeros(int(rng.integers(0, in_rate // 2)), np.int16))
        parts.append(noise(int(rng.integers(1, in_rate // 5)), int(rng.integers(1000))))
    chunk = in_rate // 100 if in_rate != 24000 else 240
    x = np.concatenate([*parts, np.zeros(in_rate, np.int16)])
    x = x[: len(x) // chunk * chunk]
    rs = StreamResampler(in_rate, out_rate)
    got = [rs.process(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    expected = _soxr_every_chunk(x, in_rate, out_rate, chunk)
    assert np.array_equal(np.concatenate(got), expected)
    assert rs.in_samples == len(x) and rs.out_samples == len(expected)
    assert (rs.skipped_samples > len(x) // 4) is skips and (rs.skipped_samples > 0) is skips


def test_resampler_rejects_aliases_when_downsampling():
    x = tone(10000, 48000, 0.5)  # above 8 kHz: must not fold into the speech band
    y = resample_all(x, 48000, 16000)
    assert np.abs(y[1000:-1000]).max() < 50


@pytest.mark.parametrize("in_rate", [32000, 48000, 96000])
def test_fir_decimator_keeps_the_speech_band_and_rejects_what_would_fold(in_rate):
    """Through the streaming path in 10 ms chunks: tones up to 7 kHz keep their level
    within 0.05 dB; from 8 kHz up they come out at least 85 dB down (they would fold into
    the band the wake word, the VAD and Gemini hear)."""
    factor = in_rate // 16000

    def level(hz: float) -> float:
        t = np.arange(in_rate) / in_rate
        x = np.sin(2 * np.pi * hz * t).astype(np.float32) * 10000
        dec = FirDecimator(factor, 16000)
        y = np.concatenate(
            [
                dec.resample_chunk(x[i : i + in_rate // 100])
                for i in range(0, len(x), in_rate // 100)
            ]
        )
        return float(np.sqrt(np.mean(y[800:-800].astype(np.float64) ** 2)) / (10000 / np.sqrt(2)))

    for hz in (100, 1000, 3000, 6000, 7000):
        assert abs(20 * np.log10(level(hz))) < 0.05, hz
    for hz in (8000, 8500, 10000, 15000, in_rate / 2 - 500):
        assert 20 * np.log10(max(level(hz), 1e-12)) < -85, hz


def test_fir_decimator_output_does_not_depend_on_how_the_input_is_cut():
    """Chunk edges anywhere (the idle callbacks hand over 80 ms at once, a conversation
    10 ms): the same samples, the same count, and a flush that completes the length."""
    x = noise(48000, 4).astype(np.float32)
    whole = FirDecimator(3, 16000)
    one = np.concatenate([whole.resample_chunk(x), whole.resample_chunk(x[:0], last=True)])
    assert len(one) == 16000
    cut = FirDecimator(3, 16000)
    sizes, parts, i, k = [480, 7, 1, 3840, 333, 2], [], 0, 0
    while i < len(x):
        parts.append(cut.resample_chunk(x[i : i + sizes[k % len(sizes)]]))
        i, k = i + sizes[k % len(sizes)], k + 1
    parts.append(cut.resample_chunk(x[:0], last=True))
    assert np.array_equal(np.concatenate(parts), one)
    # The filter's delay is taken off: a click at input sample 3 * 1000 peaks at output 1000.
    click = np.zeros(48000, dtype=np.float32)
    click[3000] = 30000
    dec = FirDecimator(3, 16000)
    y = np.concatenate([dec.resample_chunk(click), dec.resample_chunk(click[:0], last=True)])
    assert int(np.argmax(np.abs(y))) == 1000
    # Latency: output 1000 is out as soon as input reaches 3000 + 150 (3.1 ms at 48 kHz;
    # soxr's variable-rate engine lags 12.5 ms).
    early = FirDecimator(3, 16000).resample_chunk(click[: 3000 + 150 + 1])
    assert len(early) == 1001 and int(np.argmax(np.abs(early))) == 1000


# ------------------------------------------------------------------------ construction


def test_constructor_does_no_io_and_stop_is_idempotent():
    engine = AudioEngine(input_device="no such mic", output_device="no such speaker")
    assert engine.state is EngineState.STOPPED and not engine.healthy
    engine.stop()
    engine.stop()
    with pytest.raises(ValueError):
        AudioEngine(block_ms=0)
    with pytest.raises(ValueError):
        AudioEngine(duplex=True, output_device=None)
    with pytest.raises(ValueError):
        AudioEngine(reopen_initial_delay_s=0.0)


# ------------------------------------------------------------------------ capture


def test_capture_from_fast_file_device_is_byte_exact(rig, engines):
    data = noise(16000 * 3, seed=2)
    rig.add_file_capture("filemic", data, pad_s=1.0)
    rig.start()
    got = Collector(cap_samples=len(data))
    engine = AudioEngine(input_device="filemic", output_device=None, on_block=got)
    engines.append(engine)
    assert engine.start() is EngineState.RUNNING
    assert engine.input_rate_hz == 16000
    assert wait_for(lambda: got.samples >= len(data))
    engine.stop()
    assert np.array_equal(got.mic_all()[: len(data)], data)
    assert got.pos[:3] == [0, 160, 320] and all(len(m) == 160 for m in got.mic)
    assert all(r is None for r in got.ref)


def test_capture_from_realtime_fifo_device_is_byte_exact(rig, engines):
    data = noise(16000, seed=3)  # one second
    feeder = rig.add_fifo_capture("mic", 16000, source=data)
    rig.start()
    got = Collector()
    engine = AudioEngine(input_device="mic", output_device=None, on_block=got)
    engines.append(engine)
    assert engine.start() is EngineState.RUNNING
    assert wait_for(lambda: got.samples >= len(data) + 1600)
    engine.stop()
    mic = got.mic_all()
    assert np.array_equal(mic[: len(data)], data)
    assert not mic[len(data) : len(data) + 1600].any()  # then the feeder's silence
    assert engine.captured_samples == got.samples
    # Real time: the feeder wrote one 10 ms block at a time; the blocks we captured were
    # fed over (at least) their own duration.
    blocks = [b for b in feeder.fed_blocks() if b.source_samples]
    assert len(blocks) == 100
    assert blocks[-1].time - blocks[0].time >= 0.99 * 0.8  # 99 block periods, no bursts


def test_48k_only_capture_device_is_resampled_to_16k(rig, engines):
    silence = np.zeros(4800, np.int16)
    clip = np.concatenate([silence, tone(440, 48000, 1.0), silence])
    rig.add_fifo_capture("usbmic", 48000, source=clip, only_rate_hz=48000)
    rig.start()
    got = Collector()
    engine = AudioEngine(input_device="usbmic", output_device=None, on_block=got)
    engines.append(engine)
    assert engine.start() is EngineState.RUNNING
    assert engine.input_rate_hz == 48000  # the device refused 16 kHz
    assert wait_for(lambda: got.samples >= 16000 * 1.4)
    engine.stop()
    y = got.mic_all()
    assert all(len(m) == 160 for m in got.mic)
    loud = np.flatnonzero(np.abs(y) > 1000)
    duration_s = (loud[-1] - loud[0]) / 16000
    assert 0.97 < duration_s < 1.01  # 1 s minus the two fade ramps' quiet ends
    assert abs(dominant_hz(y[loud[0] : loud[-1]], 16000) - 440) < 2
    max_step = 2 * np.pi * 440 * 10000 / 16000
    assert np.abs(np.diff(y.astype(np.int32))).max() < 1.1 * max_step  # no clicks at edges


def test_48k_file_capture_matches_offline_streaming_resampler_exactly(rig, engines):
    data = noise(48000 * 2, seed=4)
    rig.add_file_capture("mic48", data, rate_hz=48000, only_rate_hz=48000)
    rig.start()
    got = Collector(cap_samples=16000 * 2 - 320)
    engine = AudioEngine(input_device="mic48", output_device=None, on_block=got)
    engines.append(engine)
    assert engine.start() is EngineState.RUNNING
    assert wait_for(lambda: got.samples >= got.cap)
    engine.stop()
    rs = StreamResampler(48000, 16000)
    expected = np.concatenate([rs.process(data[i : i + 480]) for i in range(0, len(data), 480)])
    mic = got.mic_all()
    assert np.array_equal(mic, expected[: len(mic)])


# ------------------------------------------------------------------------ playback


def test_playback_on_24k_device_is_byte_exact(rig, engines):
    clip = noise(24000, seed=6)
    recorder = rig.add_fifo_playback("spk", 24000)
    rig.add_fifo_capture("mic", 16000)
    rig.start()
    source = Source(clip)
    source.armed.set()
    engine = AudioEngine(input_device="mic", output_device="spk", output_source=source)
    engines.append(engine)
    assert engine.start() is EngineState.RUNNING
    assert engine.output_rate_hz == 24000
    assert wait_for(lambda: recorder.drained_samples >= len(clip) + 4800)
    engine.stop()
    played = recorder.samples()
    lead = first_nonzero(played)
    assert lead <= 4800 and not played[:lead].any()  # PortAudio's priming silence
    assert np.array_equal(played[lead : lead + len(clip)], clip)
    assert engine.played_samples_24k >= len(clip)
    assert engine.played_samples_24k == engine.played_device_samples


def test_playback_on_48k_only_device_is_resampled(rig, engines):
    clip = tone(440, 24000, 0.5)
    recorder = rig.add_fifo_playback("hdmi", 48000, only_rate_hz=48000)
    rig.add_fifo_capture("mic", 16000)
    rig.start()
    source = Source(clip)
    source.armed.set()
    engine = AudioEngine(input_device="mic", output_device="hdmi", output_source=source)
    engines.append(engine)
    assert engine.start() is EngineState.RUNNING
    assert engine.output_rate_hz == 48000
    assert wait_for(lambda: recorder.drained_samples >= 48000 * 0.7)
    engine.stop()
    played = recorder.samples().astype(np.float64)
    loud = np.flatnonzero(np.abs(played) > 1000)
    assert 0.47 < (loud[-1] - loud[0]) / 48000 < 0.51
    assert abs(dominant_hz(played[loud[0] : loud[-1]], 48000) - 440) < 2
    expected = resample_all(clip, 24000, 48000).astype(np.float64)
    start = first_nonzero(recorder.samples())
    seg = played[start : start + len(expected)]
    corr = np.dot(seg, expected[: len(seg)]) / np.sqrt(
        np.dot(seg, seg) * np.dot(expected, expected)
    )
    assert corr > 0.99
    assert engine.played_device_samples == 2 * engine.played_samples_24k


def test_separate_streams_hand_the_played_audio_to_the_mic_side_for_the_guard(rig, engines):
    """Echo cancellation off: no duplex stream, but ``ref`` still says what the speaker
    played (16 kHz, same length as mic), so the daemon's playback guard keeps the wake
    word and VAD deaf to the device's own reply."""
    from edge_agent.audio.echo import PlaybackGuard

    rig.add_fifo_capture("mic", 16000)
    rig.add_fifo_playback("spk", 48000, only_rate_hz=48000)
    rig.start()
    clip = tone(440, 24000, 0.5)
    got, source = Collector(), Source(clip)
    engine = AudioEngine(
        input_device="mic", output_device="spk", duplex=False, output_source=source, on_block=got
    )
    engines.append(engine)
    assert engine.start() is EngineState.RUNNING
    assert not engine.duplex_active
    assert wait_for(lambda: got.samples >= 3200)  # 200 ms of nothing playing
    source.armed.set()
    assert wait_for(lambda: source.pos >= len(clip))
    assert wait_for(lambda: got.samples >= 16000 * 2)
    engine.stop()
    assert all(r is not None and len(r) == len(m) for m, r in zip(got.mic, got.ref, strict=True))
    ref = got.ref_all()
    assert not ref[:3200].any()  # silence while nothing plays
    loud = np.flatnonzero(np.abs(ref) > 1000)
    assert len(loud) and 0.45 < (loud[-1] - loud[0]) / 16000 < 0.52  # the 0.5 s tone
    assert abs(dominant_hz(ref[loud[0] : loud[-1]], 16000) - 440) < 3
    guard, guarded = PlaybackGuard(tail_ms=500), []
    for m, r, pos in zip(got.mic, got.ref, got.pos, strict=True):
        if guard.update(r, pos, len(m)):
            guarded.append(pos)
    assert guarded and guarded[0] <= loud[0] + 160 and guarded[-1] >= loud[-1]


# ------------------------------------------------------------------------ duplex


def _run_duplex(rig, engines, rate: int, in_name: str, out_name: str, clip, got, source):
    engine = AudioEngine(
        input_device=in_name,
        output_device=out_name,
        duplex=True,
        duplex_rate_hz=rate,
        output_source=source,
        on_block=got,
    )
    engines.append(engine)
    assert engine.start() is EngineState.RUNNING
    assert engine.duplex_active and engine.input_rate_hz == rate == engine.output_rate_hz
    assert wait_for(lambda: got.samples >= 3200)  # 200 ms of nothing playing
    source.armed.set()
    assert wait_for(lambda: source.pos >= len(clip))
    assert wait_for(lambda: got.samples >= 16000 * 1.5)
    engine.stop()
    return engine


def test_duplex_16k_reference_is_exactly_what_was_played_aligned_with_mic(rig, engines):
    mic_data = noise(16000 * 2, seed=7)
    duplex = rig.add_duplex("dup", 16000, source=mic_data)
    rig.start()
    clip = noise(12000, seed=8)  # 0.5 s at 24 kHz
    got, source = Collector(), Source(clip)
    _run_duplex(rig, engines, 16000, "dup", "dup", clip, got, source)
    mic, ref = got.mic_all(), got.ref_all()
    assert len(ref) == len(mic) and all(len(r) == 160 for r in got.ref)
    assert np.array_equal(mic[: len(mic_data)], mic_data[: len(mic)])
    assert not ref[:3200].any()  # zeros while nothing plays
    # The reference for block k is device output frames [160k, 160k+160): the frames of
    # the same callbacks that delivered mic block k. At 16 kHz that is bit-exact.
    played = duplex.recorder.samples()
    lead = first_nonzero(played) - first_nonzero(ref)  # PortAudio's priming silence
    assert lead >= 0 and not played[:lead].any()
    n = min(len(ref), len(played) - lead)
    assert n > 16000
    assert np.array_equal(ref[:n], played[lead : lead + n])


def test_duplex_48k_reference_is_the_played_signal_resampled(rig, engines):
    duplex = rig.add_duplex("dup", 48000)
    rig.start()
    clip = noise(12000, seed=9)
    got, source = Collector(), Source(clip)
    engine = _run_duplex(rig, engines, 48000, "dup", "dup", clip, got, source)
    ref = got.ref_all()
    assert not ref[:3200].any()
    played = duplex.recorder.samples()
    lead48 = first_nonzero(played) - 3 * first_nonzero(ref)
    lead48 = 480 * round(lead48 / 480)  # priming is whole periods; resampler delay is less
    device_out = played[lead48:]
    # The engine's reference resampler saw exactly these device blocks, 480 at a time.
    rs = StreamResampler(48000, 16000)
    expected = np.concatenate(
        [rs.process(device_out[i : i + 480]) for i in range(0, len(device_out) - 479, 480)]
    )
    n = min(len(ref), len(expected))
    assert n > 16000
    assert np.array_equal(ref[:n], expected[:n])
    assert engine.played_device_samples >= 3 * n


class HoldingCollector(Collector):
    """A consumer that, like the capture pipeline while the ears wait for the wake word,
    lets idle input wait until a block reaches phase + k * 1280 (an 80 ms grid)."""

    def __init__(self, phase: int = 128) -> None:
        super().__init__()
        self.hold_grid: tuple[int, int] | None = (phase, 1280)
        self.arrivals: list[float] = []
        self.due_blocks: list[int] = []

    def __call__(self, mic: np.ndarray, ref: np.ndarray | None, pos: int) -> HoldingCollector:
        super().__call__(mic, ref, pos)
        self.arrivals.append(time.monotonic())
        if self.hold_grid is not None and reaches_grid(self.hold_grid, pos, len(mic)):
            self.due_blocks.append(pos)
        return self


def test_duplex_48k_idle_input_waits_for_its_grid_and_comes_out_unchanged(rig, engines):
    """Held back while nothing plays, the mic comes out in bursts that end with the block
    reaching the grid, yet every block is 10 ms at its position and every sample is the
    offline streaming resampler's; the reference stays exactly the played signal
    resampled across the switch from held silence to a reply."""
    mic48 = noise(48000 * 3, seed=12)
    duplex = rig.add_duplex("dup", 48000, source=mic48)
    rig.start()
    clip = noise(12000, seed=13)
    got, source = HoldingCollector(), Source(clip)
    engine = AudioEngine(
        input_device="dup",
        output_device="dup",
        duplex=True,
        duplex_rate_hz=48000,
        output_source=source,
        on_block=got,
    )
    engines.append(engine)
    assert engine.start() is EngineState.RUNNING
    assert wait_for(lambda: got.samples >= 16000)  # 1 s of idle input
    source.armed.set()
    assert wait_for(lambda: source.pos >= len(clip))
    assert wait_for(lambda: got.samples >= 16000 * 2)
    engine.stop()
    assert all(len(m) == 160 for m in got.mic)
    assert got.pos == list(range(0, 160 * len(got.pos), 160))
    rs = StreamResampler(48000, 16000)
    expected = np.concatenate([rs.process(mic48[i : i + 480]) for i in range(0, len(mic48), 480)])
    mic = got.mic_all()
    assert np.array_equal(mic, expected[: len(mic)])
    # Idle (the first second, after the resampler's start-up): bursts, each ending with
    # its due block; a burst is blocks arriving within 3 ms of each other.
    idle = [k for k, p in enumerate(got.pos) if 3200 <= p < 14000]
    bursts = [k for k in idle if got.arrivals[k] - got.arrivals[k - 1] > 0.003]
    assert len(bursts) <= len(idle) // 4, f"{len(bursts)} bursts for {len(idle)} idle blocks"
    ends = [k - 1 for k in bursts[1:]]
    assert sum(got.pos[k] in got.due_blocks for k in ends) >= 0.8 * len(ends)
    # The reference: zeros while held, then the played signal, resampled without a seam.
    ref = got.ref_all()
    played = duplex.recorder.samples()
    lead48 = first_nonzero(played) - 3 * first_nonzero(ref)
    lead48 = 480 * round(lead48 / 480)
    device_out = played[lead48:]
    rs = StreamResampler(48000, 16000)
    expected_ref = np.concatenate(
        [rs.process(device_out[i : i + 480]) for i in range(0, len(device_out) - 479, 480)]
    )
    n = min(len(ref), len(expected_ref))
    assert n > 16000 and first_nonzero(ref) > 14000
    assert np.array_equal(ref[:n], expected_ref[:n])


def test_duplex_across_two_different_alsa_devices(rig, engines):
    """PortAudio's ALSA backend runs input and output pcms in one callback even when they
    are different devices (on real hardware: keep them on one card, one clock)."""
    mic_data = noise(16000, seed=10)
    rig.add_fifo_capture("mic", 16000, source=mic_data)
    recorder = rig.add_fifo_playback("spk", 16000)
    rig.start()
    clip = noise(12000, seed=11)
    got, source = Collector(), Source(clip)
    _run_duplex(rig, engines, 16000, "mic", "spk", clip, got, source)
    mic, ref = got.mic_all(), got.ref_all()
    assert np.array_equal(mic[: len(mic_data)], mic_data)
    played = recorder.samples()
    lead = first_nonzero(played) - first_nonzero(ref)
    n = min(len(ref), len(played) - lead)
    assert n > 16000 and np.array_equal(ref[:n], played[lead : lead + n])


# ------------------------------------------------------------------------ device loss


def _resilient_engine(engines, max_delay_s: float = 0.2, **kw) -> AudioEngine:
    engine = AudioEngine(
        stall_timeout_s=0.5,
        reopen_initial_delay_s=0.05,
        reopen_max_delay_s=max_delay_s,
        **kw,
    )
    engines.append(engine)
    return engine


def _mic_only_engine(engines) -> AudioEngine:
    return _resilient_engine(engines, input_device="mic", output_device=None, on_block=Collector())


def _advancing(engine: AudioEngine, seconds: float = 0.3) -> bool:
    before = engine.captured_samples
    time.sleep(seconds)
    return engine.captured_samples > before


def _listens_while_degraded(engine: AudioEngine, got: Collector, retries: int = 2) -> None:
    """While the speaker is gone: still healthy, the mic keeps delivering contiguous
    blocks with a zero reference (the watchdog's counter moves) across several retries
    of the full configuration, and the source is drained without reaching any device."""
    assert wait_for(lambda: engine.state is EngineState.DEGRADED)
    assert engine.healthy and engine.output_missing and not engine.duplex_active
    assert engine.output_device_name is None and engine.stats()["output_missing"]
    first_retry = engine.output_retries + 1
    assert wait_for(lambda: engine.output_retries >= first_retry)  # full session long gone
    played = engine.played_device_samples
    with got.lock:
        start = len(got.mic)
    assert wait_for(lambda: engine.output_retries >= first_retry + retries)
    assert wait_for(lambda: _advancing(engine))
    assert engine.state is EngineState.DEGRADED
    assert engine.played_device_samples == played  # nothing reached a device meanwhile
    discarded = engine.discarded_samples_24k
    assert wait_for(lambda: engine.discarded_samples_24k > discarded)
    with got.lock:
        refs, positions = got.ref[start:], got.pos
    assert refs and all(r is not None and len(r) == 160 and not r.any() for r in refs)
    assert positions == list(range(0, 160 * len(positions), 160))  # no gaps, no repeats


def test_capture_device_vanishes_and_comes_back(rig, engines):
    feeder = rig.add_fifo_capture("mic", 16000)
    rig.start()
    engine = _resilient_engine(
        engines, input_device="mic", output_device=None, on_block=Collector()
    )
    assert engine.start() is EngineState.RUNNING
    assert wait_for(lambda: engine.captured_samples > 1600)
    feeder.vanish()
    assert wait_for(lambda: engine.state is EngineState.REOPENING)
    assert "mic" in (engine.last_error or "")
    assert not _advancing(engine) and not engine.healthy
    feeder.reappear()
    assert wait_for(lambda: engine.state is EngineState.RUNNING)
    assert wait_for(lambda: _advancing(engine))
    assert engine.reopen_count >= 1


def test_start_with_missing_device_retries_until_it_appears(rig, engines):
    feeder = rig.add_fifo_capture("mic", 16000)
    rig.add_fifo_capture("line_in", 16000)
    rig.start()
    feeder.vanish()
    engine = _resilient_engine(
        engines, input_device="mic", output_device=None, on_block=Collector()
    )
    assert engine.start() is EngineState.REOPENING
    assert "no input device matches 'mic'" in engine.last_error
    assert "available input devices: 'line_in'" in engine.last_error  # lists what is there
    time.sleep(0.5)  # several retries, still no crash, still reopening
    assert engine.state is EngineState.REOPENING
    feeder.reappear()
    assert wait_for(lambda: engine.state is EngineState.RUNNING)
    assert wait_for(lambda: _advancing(engine))


def _degraded_engine(engines, **kw) -> AudioEngine:
    """Backoff capped at 1 s: several retries of the speaker within a test, each one
    separated by real listening time (at 0.2 s the mic would mostly be reopening)."""
    return _resilient_engine(engines, max_delay_s=1.0, **kw)


def test_speaker_vanishes_and_comes_back(rig, engines):
    """Separate streams. Behaviour change (review: "losing the speaker makes the device
    deaf"): this used to expect ``reopening`` (mic closed too) while the speaker was gone;
    now the mic keeps running in a degraded session and only playback waits."""
    rig.add_fifo_capture("mic", 16000)
    recorder = rig.add_fifo_playback("spk", 24000)
    other = rig.add_fifo_playback("spk2", 24000)  # contains "spk": must not be picked
    rig.start()
    source, got = Source(np.full(24000 * 60, 1000, np.int16)), Collector()
    source.armed.set()
    engine = _degraded_engine(
        engines, input_device="mic", output_device="spk", output_source=source, on_block=got
    )
    assert engine.start() is EngineState.RUNNING
    assert recorder.wait_samples(2400, timeout=WAIT_S)
    recorder.vanish()
    _listens_while_degraded(engine, got)
    assert engine.reopen_count >= 1
    assert wait_for(lambda: "no output device matches 'spk'" in (engine.last_error or ""))
    assert "'spk2'" in engine.last_error and "listening without playback" in engine.last_error
    assert engine.state is EngineState.DEGRADED
    recorder.reappear()
    assert wait_for(lambda: engine.state is EngineState.RUNNING)
    assert not engine.output_missing and engine.output_device_name == "spk"
    drained = recorder.drained_samples
    assert recorder.wait_samples(drained + 2400, timeout=WAIT_S)
    assert 1000 in recorder.samples()[drained:]
    assert not other.samples().any()
    assert wait_for(lambda: _advancing(engine))


def test_duplex_starts_without_its_speaker_and_gets_it_back(rig, engines):
    """Echo cancellation on (one duplex stream) and the output missing at start: the mic
    runs alone with a zero reference; a reply that arrives meanwhile is drained in real
    time, not kept to burst out later; once the speaker is back the duplex stream is."""
    rig.add_fifo_capture("mic", 24000)
    recorder = rig.add_fifo_playback("spk", 24000)
    rig.start()
    recorder.vanish()  # the TV is off when the appliance boots
    source, got = Source(), Collector()
    engine = _degraded_engine(
        engines,
        input_device="mic",
        output_device="spk",
        duplex=True,
        duplex_rate_hz=24000,
        capture_rate_hz=24000,  # the mic alone opens at the rate the rig feeds it
        output_source=source,
        on_block=got,
    )
    assert engine.start() is EngineState.DEGRADED
    assert "no output device matches 'spk'" in engine.last_error
    _listens_while_degraded(engine, got)
    missed = noise(12000, seed=13)  # a 0.5 s reply nobody can hear
    source.play(missed)
    assert wait_for(lambda: source.pos >= len(missed))  # drained, as if played
    assert engine.state is EngineState.DEGRADED
    recorder.reappear()
    assert wait_for(lambda: engine.state is EngineState.RUNNING)
    assert engine.duplex_active and not engine.output_missing
    with got.lock:
        back = len(got.ref)
    clip = noise(12000, seed=14)
    source.play(clip)
    assert recorder.wait_samples(recorder.drained_samples + len(clip) + 4800, timeout=WAIT_S)
    played = recorder.samples()  # everything the speaker ever got
    lead = first_nonzero(played)
    # Silence, then the new reply intact: the missed one never burst out.
    assert np.array_equal(played[lead : lead + len(clip)], clip)
    assert wait_for(lambda: len(got.ref) > back + 100)
    with got.lock:
        refs = got.ref[back:]
    assert any(r is not None and r.any() for r in refs)  # the echo reference is back


def test_duplex_speaker_vanishes_and_comes_back(rig, engines):
    rig.add_fifo_capture("mic", 16000)
    recorder = rig.add_fifo_playback("spk", 16000)
    rig.start()
    source, got = Source(np.full(24000 * 60, 1000, np.int16)), Collector()
    source.armed.set()
    engine = _degraded_engine(
        engines,
        input_device="mic",
        output_device="spk",
        duplex=True,
        duplex_rate_hz=16000,
        output_source=source,
        on_block=got,
    )
    assert engine.start() is EngineState.RUNNING and engine.duplex_active
    assert recorder.wait_samples(1600, timeout=WAIT_S)
    recorder.vanish()
    _listens_while_degraded(engine, got)
    assert engine.reopen_count >= 1
    assert wait_for(lambda: "no output device matches 'spk'" in (engine.last_error or ""))
    assert not engine.input_stalled
    recorder.reappear()
    assert wait_for(lambda: engine.state is EngineState.RUNNING)
    assert engine.duplex_active
    drained = recorder.drained_samples
    assert recorder.wait_samples(drained + 1600, timeout=WAIT_S)
    assert recorder.samples()[drained:].any()  # playback reaches the speaker again
    assert wait_for(lambda: _advancing(engine))


def test_speaker_that_will_not_open_degrades_instead_of_deafening(rig, engines):
    """Present but unusable (no rate we offer) is the same as missing: listen, say why."""
    rig.add_fifo_capture("mic", 16000)
    rig.add_fifo_playback("odd", 11025, only_rate_hz=11025)
    rig.start()
    got = Collector()
    engine = _degraded_engine(
        engines,
        input_device="mic",
        output_device="odd",
        playback_rates_hz=(24000, 48000),
        output_source=Source(),
        on_block=got,
    )
    assert engine.start() is EngineState.DEGRADED
    assert "accepts none of [24000, 48000] Hz" in engine.last_error
    _listens_while_degraded(engine, got)


def test_duplex_mic_loss_still_reopens_everything(rig, engines):
    """Only the speaker degrades: a mic that goes away in duplex mode is reopened with
    backoff as before (not healthy, counter stopped), speaker or no speaker."""
    feeder = rig.add_fifo_capture("mic", 16000)
    rig.add_fifo_playback("spk", 16000)
    rig.start()
    engine = _resilient_engine(
        engines,
        input_device="mic",
        output_device="spk",
        duplex=True,
        duplex_rate_hz=16000,
        output_source=Source(),
        on_block=Collector(),
    )
    assert engine.start() is EngineState.RUNNING
    assert wait_for(lambda: engine.captured_samples > 1600)
    feeder.vanish()
    assert wait_for(lambda: engine.state is EngineState.REOPENING)
    assert "mic" in (engine.last_error or "") and not engine.output_missing
    assert not _advancing(engine) and not engine.healthy
    feeder.reappear()
    assert wait_for(lambda: engine.state is EngineState.RUNNING)
    assert engine.duplex_active
    assert wait_for(lambda: _advancing(engine))


def test_frozen_mic_stalls_counter_stop_stays_fast_and_it_recovers(rig, engines):
    feeder = rig.add_fifo_capture("mic", 16000)
    rig.start()
    engine = _resilient_engine(
        engines, input_device="mic", output_device=None, on_block=Collector()
    )
    assert engine.start() is EngineState.RUNNING
    assert wait_for(lambda: engine.captured_samples > 1600)
    feeder.freeze()
    assert wait_for(lambda: engine.state is EngineState.REOPENING)
    assert not _advancing(engine)  # what the daemon's watchdog looks at
    assert engine.input_stalled  # whatever the reopen attempts say in last_error
    feeder.unfreeze()
    assert wait_for(lambda: engine.state is EngineState.RUNNING)
    assert wait_for(lambda: _advancing(engine))
    assert not engine.input_stalled
    # Freeze again and stop while PortAudio's thread is stuck inside ALSA: stop() must
    # not wait for it (the close finishes in the background once the device moves).
    feeder.freeze()
    assert wait_for(lambda: engine.state is EngineState.REOPENING)
    t0 = time.monotonic()
    engine.stop()
    assert time.monotonic() - t0 < 2.0  # bound is 0.45 s; generous for a loaded machine
    assert engine.state is EngineState.STOPPED
    feeder.unfreeze()  # lets the background close finish before the rig goes
    assert engine.start() is EngineState.RUNNING  # and it can start again
    assert wait_for(lambda: _advancing(engine))


def test_barge_in_clear_silences_output_within_one_device_period(rig, engines):
    """With the real jitter buffer as the source: what was handed to the device before the
    press plays exactly; nothing after one more device period does."""
    from edge_agent.core.jitter import JitterBuffer

    recorder = rig.add_fifo_playback("spk", 24000)
    rig.add_fifo_capture("mic", 16000)
    rig.start()
    jitter = JitterBuffer(prefill_ms=0, fade_ms=0)
    clip = noise(24000 * 3, seed=12)
    jitter.push(clip.tobytes())  # before start: every sample handed over is the clip's
    engine = AudioEngine(input_device="mic", output_device="spk", output_source=jitter.pull)
    engines.append(engine)
    assert engine.start() is EngineState.RUNNING
    assert wait_for(lambda: engine.played_samples_24k > 12000)
    before = engine.played_samples_24k
    jitter.clear()  # the button press
    after = engine.played_samples_24k
    assert recorder.wait_samples(after + 24000, timeout=WAIT_S)
    engine.stop()
    played = recorder.samples()
    lead = first_nonzero(played)
    assert np.array_equal(played[lead : lead + before], clip[:before])
    period = 240  # 10 ms at 24 kHz: a callback that was already running at the press
    assert not played[lead + after + period :].any()
    # When it went quiet, in wall-clock terms, is what the rig's drain log tells:
    last_loud = int(np.flatnonzero(played)[-1])
    assert recorder.time_of_sample(last_loud) is not None


def test_barge_in_on_a_48k_device_fades_out_without_a_click(rig, engines):
    """The resampler keeps its state across a clear, so the jitter buffer's 5 ms fade-out
    reaches a 48 kHz device intact: no sample step bigger than the tone's own, and quiet
    within a device period, the fade and the filter's few ms after the press."""
    from edge_agent.core.jitter import JitterBuffer

    recorder = rig.add_fifo_playback("hdmi", 48000, only_rate_hz=48000)
    rig.add_fifo_capture("mic", 16000)
    rig.start()
    fade_ms = 5
    jitter = JitterBuffer(prefill_ms=0, fade_ms=fade_ms)
    amp, freq = 10000.0, 440.0
    t = np.arange(24000 * 3) / 24000
    jitter.push(np.round(amp * np.cos(2 * np.pi * freq * t)).astype(np.int16).tobytes())
    engine = AudioEngine(input_device="mic", output_device="hdmi", output_source=jitter.pull)
    engines.append(engine)
    assert engine.start() is EngineState.RUNNING
    assert engine.output_rate_hz == 48000
    assert wait_for(lambda: engine.played_samples_24k > 12000)
    jitter.clear()  # the button press, mid-tone
    written = engine.played_device_samples
    assert recorder.wait_samples(written + 48000, timeout=WAIT_S)
    engine.stop()
    played = recorder.samples().astype(np.int64)
    lead = first_nonzero(played)  # PortAudio primes the device with silence first
    natural_step = 2 * np.pi * freq / 48000 * amp  # the tone's largest sample-to-sample step
    # An output xrun (a late callback on a loaded machine) makes PortAudio insert silence,
    # a step that is not the flush's: the counters go into the messages to tell them apart.
    xruns = f"output underflows {engine.output_underflows}"
    steps = np.abs(np.diff(played))
    assert steps.max() < 1.5 * natural_step, (int(steps.argmax()), lead, written, xruns)
    period = 480  # 10 ms at 48 kHz: a callback already running at the press
    fade = 48000 * fade_ms // 1000
    filter_and_leftover = 48000 * 4 // 1000  # ~2 ms soxr delay + < 1 ms leftover, rounded up
    last_loud = int(np.flatnonzero(np.abs(played) > 100)[-1])
    assert last_loud > lead + written - period, (last_loud, lead, written)  # cut mid-tone
    bound = lead + written + period + fade + filter_and_leftover
    assert last_loud <= bound, (last_loud, bound, xruns)
