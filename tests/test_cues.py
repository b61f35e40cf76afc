"""Earcons and CueMixer: distinct, bounded, click-free, saturating, thread-safe."""

from __future__ import annotations

import itertools
import logging
import random
import threading

import numpy as np
import pytest

from edge_agent.core.cues import Cue, CueMixer, render_cue

SR = 24_000
BLOCK = 480
FADE = SR * 5 // 1000


def dominant_hz(x: np.ndarray, sr: int = SR) -> float:
    """Frequency of the strongest spectral peak (Hann window, zero-padded for resolution)."""
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x)), 1 << 17))
    return float(np.argmax(spectrum) * sr / (1 << 17))


def contour(x: np.ndarray, sr: int = SR) -> tuple[float, float]:
    """Dominant frequency of the first and of the last 40% of a cue."""
    part = int(len(x) * 0.4)
    return dominant_hz(x[:part], sr), dominant_hz(x[-part:], sr)


def max_step(x: np.ndarray) -> int:
    return int(np.max(np.abs(np.diff(x.astype(np.int32)))))


def drain(mixer: CueMixer, limit_blocks: int = 200) -> np.ndarray:
    out = []
    for _ in range(limit_blocks):
        if not mixer.is_playing:
            break
        out.append(mixer.mix_into(np.zeros(BLOCK, np.int16)))
    assert not mixer.is_playing, "a cue never finished"
    return np.concatenate(out) if out else np.zeros(0, np.int16)


# --------------------------------------------------------------------------- the sounds


@pytest.mark.parametrize("cue", list(Cue))
def test_cue_is_short_bounded_and_starts_and_ends_at_zero(cue: Cue) -> None:
    x = render_cue(cue, volume=1.0)
    assert x.dtype == np.int16 and x.ndim == 1
    assert 0.04 <= len(x) / SR <= 0.4
    peak = int(np.max(np.abs(x.astype(np.int32))))
    assert 0.2 * 32767 <= peak <= 32767
    # Attack and release envelopes: the first and last samples are near silence, so a cue
    # starting or ending on its own never clicks.
    assert np.max(np.abs(x[:5].astype(np.int32))) <= 0.02 * peak
    assert np.max(np.abs(x[-5:].astype(np.int32))) <= 0.02 * peak


@pytest.mark.parametrize("cue", list(Cue))
def test_cue_volume_scales_and_zero_is_silent(cue: Cue) -> None:
    full = render_cue(cue, volume=1.0).astype(np.int32)
    quiet = render_cue(cue, volume=0.4).astype(np.int32)
    assert np.max(np.abs(quiet)) <= 0.4 * 32767 + 1
    assert np.max(np.abs(quiet - np.round(full * 0.4))) <= 1
    assert not render_cue(cue, volume=0.0).any()


def test_cues_are_distinct_by_pitch_and_contour() -> None:
    contours = {cue: contour(render_cue(cue)) for cue in Cue}
    # No two cues share a (start pitch, end pitch) pair, with at least a semitone between them.
    for a, b in itertools.combinations(Cue, 2):
        (a0, a1), (b0, b1) = contours[a], contours[b]
        semitones = max(abs(12 * np.log2(a0 / b0)), abs(12 * np.log2(a1 / b1)))
        assert semitones >= 1.0, (a, b, contours[a], contours[b])
    wake0, wake1 = contours[Cue.WAKE]
    end0, end1 = contours[Cue.END]
    assert wake1 > wake0 * 1.3  # rising
    assert end1 < end0 / 1.3  # falling
    assert max(contours[Cue.ERROR]) < 300  # a low buzz
    assert contours[Cue.MUTE_ON][0] < contours[Cue.MUTE_OFF][0] / 1.5  # low blip vs high blip
    for cue in (Cue.MUTE_ON, Cue.MUTE_OFF, Cue.ERROR, Cue.THINKING):
        start, end = contours[cue]
        assert abs(start - end) < 5  # single-pitch cues


def test_error_cue_is_buzzy_not_a_pure_tone() -> None:
    x = render_cue(Cue.ERROR).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    fundamental = spectrum[(freqs > 150) & (freqs < 250)].max()
    overtones = spectrum[(freqs > 350) & (freqs < 1500)].max()
    assert overtones > 0.2 * fundamental
    sine = render_cue(Cue.MUTE_ON).astype(np.float64)
    s = np.abs(np.fft.rfft(sine * np.hanning(len(sine))))
    f = np.fft.rfftfreq(len(sine), 1 / SR)
    assert s[(f > 1200) & (f < 4000)].max() < 0.2 * s.max()  # contrast: a plain blip


def test_cues_render_at_other_sample_rates() -> None:
    for sr in (16_000, 48_000):
        x = render_cue(Cue.MUTE_OFF, sample_rate_hz=sr)
        assert abs(dominant_hz(x, sr) - 1046.5) < 5
        assert abs(len(x) / sr - len(render_cue(Cue.MUTE_OFF)) / SR) < 0.001


# --------------------------------------------------------------------------- the mixer


def test_mix_into_plays_the_cue_exactly_then_stops() -> None:
    mixer = CueMixer(cue_volume=0.5)
    assert not mixer.is_playing and mixer.current is None
    assert mixer.play(Cue.WAKE)
    assert mixer.is_playing and mixer.current is Cue.WAKE
    out = drain(mixer)
    cue = mixer.cue_samples(Cue.WAKE)
    assert np.array_equal(out[: len(cue)], cue)
    assert not out[len(cue) :].any()
    assert mixer.current is None


def test_mix_into_without_a_cue_returns_the_block_untouched() -> None:
    mixer = CueMixer()
    block = (np.arange(BLOCK) - 240).astype(np.int16)
    assert mixer.mix_into(block) is block
    mixer.play("mute_on")
    before = block.copy()
    mixed = mixer.mix_into(block)
    assert mixed is not block
    assert np.array_equal(block, before)  # the caller's block is never modified
    assert np.array_equal(
        mixed, (block.astype(np.int32) + mixer.cue_samples(Cue.MUTE_ON)[:BLOCK]).astype(np.int16)
    )


def test_mixing_saturates_instead_of_wrapping() -> None:
    mixer = CueMixer(cue_volume=1.0)
    cue = mixer.cue_samples(Cue.WAKE).astype(np.int32)
    for level in (30_000, -30_000):
        mixer.play(Cue.WAKE)
        block = np.full(len(cue), level, dtype=np.int16)
        mixed = mixer.mix_into(block).astype(np.int32)
        expected = np.clip(level + cue, -32768, 32767)
        assert np.array_equal(mixed, expected)
        # The sum really did leave the int16 range, and was held at the rail, not wrapped.
        over = (level + cue > 32767) | (level + cue < -32768)
        assert over.sum() > 100
        assert np.all(np.abs(mixed[over]) >= 32767)
        assert np.all(np.sign(mixed[over]) == np.sign(level))


def test_replacing_a_cue_crossfades_without_a_click() -> None:
    mixer = CueMixer(cue_volume=1.0)
    wake = mixer.cue_samples(Cue.WAKE).astype(np.int32)
    end = mixer.cue_samples(Cue.END).astype(np.int32)
    natural = max(max_step(wake), max_step(end))
    # Switch right after the loudest sample of the wake cue: the worst place to cut.
    cut = int(np.argmax(np.abs(wake[: len(wake) // 2]))) + 1
    assert abs(wake[cut - 1]) > 2 * natural  # a hard switch here would click
    mixer.play(Cue.WAKE)
    first = mixer.mix_into(np.zeros(cut, np.int16))
    mixer.play(Cue.END)
    assert mixer.current is Cue.END
    rest = drain(mixer)
    whole = np.concatenate([first, rest]).astype(np.int32)
    # Crossfade: the faded wake moves by at most its own step plus level/FADE, the new cue by
    # its attack's step; a hard switch would jump by the whole level.
    bound = max_step(wake) + abs(wake[cut - 1]) // FADE + max_step(end[: FADE + 1]) + 2
    assert bound < abs(wake[cut - 1])
    assert max_step(whole) <= bound
    # After the short fade the output is exactly the new cue.
    assert np.array_equal(whole[cut + FADE : cut + len(end)], end[FADE:])


def test_rapid_replacement_keeps_earlier_fades_and_stays_bounded() -> None:
    mixer = CueMixer(cue_volume=1.0)
    out = []
    sequence = [Cue.ERROR, Cue.WAKE, Cue.MUTE_OFF, Cue.END, Cue.THINKING]
    for cue in sequence:
        mixer.play(cue)
        out.append(mixer.mix_into(np.zeros(FADE // 3, np.int16)))
    out.append(drain(mixer))
    whole = np.concatenate(out)
    last = mixer.cue_samples(Cue.THINKING)
    start = (len(sequence) - 1) * (FADE // 3)
    # Earlier fades are all over within FADE of the last switch; then only the last cue.
    assert np.array_equal(whole[start + FADE : start + len(last)], last[FADE:])
    assert not whole[start + len(last) :].any()
    natural = max(max_step(mixer.cue_samples(c)) for c in Cue)
    assert max_step(whole) <= 2 * natural


def test_stop_fades_out_quickly() -> None:
    mixer = CueMixer(cue_volume=1.0)
    mixer.play(Cue.ERROR)
    head = mixer.mix_into(np.zeros(1000, np.int16))
    mixer.stop()
    assert mixer.is_playing  # still fading
    tail = mixer.mix_into(np.zeros(BLOCK, np.int16))
    assert not mixer.is_playing
    assert not tail[FADE:].any()
    err = mixer.cue_samples(Cue.ERROR).astype(np.int32)
    assert max_step(np.concatenate([head, tail])) <= max_step(err) + abs(err[999]) // FADE + 2


def test_unknown_cue_is_logged_once_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    mixer = CueMixer()
    with caplog.at_level(logging.WARNING, logger="edge_agent.core.cues"):
        assert mixer.play("fanfare") is False
        assert mixer.play("fanfare") is False
    assert not mixer.is_playing
    assert sum("fanfare" in r.getMessage() for r in caplog.records) == 1


def test_bad_blocks_and_volumes_are_rejected() -> None:
    mixer = CueMixer()
    with pytest.raises(ValueError):
        mixer.mix_into(np.zeros(BLOCK, np.float32))
    with pytest.raises(ValueError):
        mixer.mix_into(np.zeros((2, BLOCK), np.int16))
    with pytest.raises(ValueError):
        CueMixer(cue_volume=1.5)
    with pytest.raises(ValueError):
        mixer.set_volume(-0.1)


def test_set_volume_applies_to_the_next_cue() -> None:
    mixer = CueMixer(cue_volume=1.0)
    loud = int(np.max(np.abs(mixer.cue_samples(Cue.WAKE).astype(np.int32))))
    mixer.set_volume(0.25)
    assert mixer.cue_volume == 0.25
    mixer.play(Cue.WAKE)
    out = drain(mixer)
    assert abs(int(np.max(np.abs(out.astype(np.int32)))) - loud * 0.25) <= 2
    assert mixer.duration_s(Cue.WAKE) == pytest.approx(len(out) / SR, abs=BLOCK / SR)


@pytest.mark.timeout(60)
def test_play_and_mix_from_two_threads() -> None:
    mixer = CueMixer(cue_volume=1.0)
    done = threading.Event()
    errors: list[BaseException] = []
    blocks = [0]

    def player() -> None:
        try:
            rng = random.Random(3)
            for _ in range(2000):
                mixer.play(rng.choice(list(Cue)))
                if rng.random() < 0.1:
                    mixer.stop()
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def mixer_thread() -> None:
        try:
            base = np.zeros(BLOCK, np.int16)
            # At most the current cue plus one fading remainder of earlier ones.
            bound = 2 * max(int(np.max(np.abs(mixer.cue_samples(c).astype(np.int32)))) for c in Cue)
            while not done.is_set() or mixer.is_playing:
                out = mixer.mix_into(base)
                assert out.dtype == np.int16 and len(out) == BLOCK
                assert int(np.max(np.abs(out.astype(np.int32)))) <= bound
                blocks[0] += 1
                if blocks[0] > 100_000:
                    raise AssertionError("mixer never went idle")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=player), threading.Thread(target=mixer_thread)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=40)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert blocks[0] > 0 and not mixer.is_playing


def test_timer_cue_is_a_high_falling_two_tone_that_repeats_cleanly() -> None:
    x = render_cue(Cue.TIMER)
    start, end = contour(x)
    assert abs(start - 1174.66) < 5 and abs(end - 880.0) < 5  # D6 then A5
    others = [max(contour(render_cue(c))) for c in Cue if c is not Cue.TIMER]
    assert start > max(others)  # the highest cue: heard across a kitchen
    # Repeated back to back (as the ringer does, with a pause) the joins do not click.
    gap = np.zeros(SR // 2, np.int16)
    ring = np.concatenate([x, gap, x, gap, x])
    assert max_step(ring) <= max_step(x) + 1
    assert np.max(np.abs(ring[len(x) : len(x) + len(gap)])) == 0


@pytest.mark.shelf
def test_reconnect_cue_is_a_quiet_short_warble_above_the_reply_tone() -> None:
    """Played where a dropped connection cut a reply: softer than the cues that report a
    decision (wake, end, error), short, and two alternating pitches (a warble)."""
    x = render_cue(Cue.RECONNECT)
    assert len(x) / SR <= 0.2
    peak = int(np.max(np.abs(x.astype(np.int32))))
    for loud in (Cue.WAKE, Cue.END, Cue.ERROR):
        assert peak < 0.6 * int(np.max(np.abs(render_cue(loud).astype(np.int32))))
    quarter = len(x) // 4
    pitches = [dominant_hz(x[i * quarter : (i + 1) * quarter]) for i in range(4)]
    low, high = pitches[0::2], pitches[1::2]
    assert all(abs(p - 739.99) < 5 for p in low) and all(abs(p - 880.0) < 5 for p in high)
    assert min(pitches) > 440 * 1.5  # far above the emulator's reply tone
