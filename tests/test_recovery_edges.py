"""A connection that drops in the middle of a reply, as a person hears and reads it.

The question is asked again on the next connection and answered from the start, so the
fragment already playing fades out, a quiet reconnect cue says why, and the whole answer
then plays once. The transcript log has one utterance per line: the cut reply on a line
of its own, marked, and the question asked again transcribed afresh, not run on from the
first transcription.

Three levels: the transcript bookkeeping alone; the real runtime (conversation machine,
playback, cue mixer, transcripts) with the real session against the emulator, the test
pulling the speaker's samples; and the real daemon end to end.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_agent.app.runtime import MuteFile, Runtime, TurnTranscript
from edge_agent.config import Config, GeminiConfig, ReconnectConfig
from edge_agent.core import events as ev
from edge_agent.core.cues import Cue, render_cue
from edge_agent.core.policy import BargeInRules
from edge_agent.core.state import ConversationMachine
from edge_agent.device.gpio import NullPanel
from edge_agent.live.session import LiveSession
from edge_agent_devkit.bench import system as bench_system
from edge_agent_devkit.emulator import EmulatorOptions, FaultSpec, LiveEmulator
from edge_agent_devkit.rig import speech
from edge_agent_devkit.rig.appliance import Appliance, ApplianceOptions

pytestmark = pytest.mark.shelf

RUNTIME_LOG = "edge_agent.app.runtime"
CUT = "gemini said (cut off by a dropped connection): "
TONE_HZ = 440.0  # the emulator's reply tone (--no-espeak)
# The reply tone reaches the speaker at about 6500 (0.25 of full scale at volume 80%):
# above this amplitude it counts as playing (the cues leak under 300 into its detector).
REPLY_LEVEL = 2000.0
CUE_MATCH = 0.8  # normalised cross-correlation that counts as the reconnect cue


# ---- the transcript bookkeeping -------------------------------------------------------------


def test_a_cut_reply_is_its_own_line_and_the_question_asked_again_replaces_the_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transcript = TurnTranscript(wall_clock=lambda: 1000.0)
    with caplog.at_level(logging.INFO, logger=RUNTIME_LOG):
        transcript.heard("user spoke 3.5 seconds")
        transcript.said("Reply ")
        assert transcript.connection_lost(asked_again=True) == []  # nothing for the history
        transcript.heard("user spoke ")  # the question, transcribed again from the start
        transcript.heard("3.5 seconds")
        transcript.said("Reply 1.")
        whole = transcript.log_and_clear()
    assert [r.getMessage() for r in caplog.records] == [
        CUT + "Reply",
        "you said: user spoke 3.5 seconds",
        "gemini said: Reply 1.",
    ]
    cut = caplog.records[0].__dict__
    assert (cut["TRANSCRIPT_ROLE"], cut["TRANSCRIPT_TURN"]) == ("model", 1)
    assert cut["TRANSCRIPT_CUT"] == "dropped connection"
    assert [(u.role, u.text, u.turn) for u in whole] == [
        ("user", "user spoke 3.5 seconds", 1),
        ("model", "Reply 1.", 1),
    ]


def test_a_drop_before_any_reply_keeps_the_question_until_it_is_heard_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transcript = TurnTranscript()
    with caplog.at_level(logging.INFO, logger=RUNTIME_LOG):
        transcript.heard("what time is it")
        transcript.connection_lost(asked_again=True)  # nothing said yet: nothing logged
        transcript.connection_lost(asked_again=True)  # a second drop while reconnecting
        transcript.said("Noon.")  # the question was not transcribed again: kept
        transcript.log_and_clear()
    assert [r.getMessage() for r in caplog.records] == [
        "you said: what time is it",
        "gemini said: Noon.",
    ]


def test_a_fatal_drop_logs_what_was_heard_and_the_cut_reply_now(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transcript = TurnTranscript()
    with caplog.at_level(logging.INFO, logger=RUNTIME_LOG):
        transcript.heard("what time is it")
        transcript.said("It is")
        history = transcript.connection_lost(asked_again=False)
        transcript.heard("hello")  # the next conversation starts clean
        transcript.log_and_clear()
    assert [r.getMessage() for r in caplog.records] == [
        CUT + "It is",
        "you said: what time is it",
        "you said: hello",
    ]
    assert [(u.role, u.text) for u in history] == [("user", "what time is it")]


# ---- the runtime and the session against the emulator -------------------------------------


def tone_level(samples: np.ndarray, rate: int, hz: float) -> np.ndarray:
    """Per sample, the amplitude of a `hz` tone in `samples` (complex demodulation and two
    5 ms moving averages, as the bench measures the reply tone)."""
    t = np.arange(samples.size) / rate
    base = samples.astype(np.float64) * np.exp(-2j * np.pi * hz * t)
    box = np.ones(max(1, rate // 200)) / max(1, rate // 200)
    return 2.0 * np.abs(np.convolve(np.convolve(base, box, mode="same"), box, mode="same"))


@dataclass(frozen=True)
class Heard:
    """What the speaker played around a reply cut by a dropped connection."""

    cues: list[int]  # where each reconnect cue starts
    fragment: int  # samples of reply tone before the first reconnect cue
    answer: int  # samples of reply tone after it


def without_reply_tone(x: np.ndarray, rate: int) -> np.ndarray:
    """`x` with TONE_HZ +- 150 Hz taken out (the cue's notes are 740 Hz and up)."""
    spectrum = np.fft.rfft(x.astype(np.float64))
    freqs = np.fft.rfftfreq(x.size, 1 / rate)
    spectrum[np.abs(freqs - TONE_HZ) < 150] = 0
    return np.fft.irfft(spectrum, x.size)


def what_was_heard(samples: np.ndarray, rate: int) -> Heard:
    """The reconnect cue is found by its shape (normalised cross-correlation with its
    rendering at `rate`, >= CUE_MATCH: the wake cue and the reply never match), with the
    reply tone's band taken out of both, since an answer that comes back quickly starts
    under the cue; the reply by its tone, counted in samples so that an underrun gap
    does not split it."""
    template = without_reply_tone(render_cue(Cue.RECONNECT, sample_rate_hz=rate), rate)
    x = without_reply_tone(samples, rate)
    m = template.size
    n = 1 << int(np.ceil(np.log2(x.size + m)))
    corr = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(template, n)), n)
    energy = np.concatenate(([0.0], np.cumsum(x * x)))
    local = np.sqrt(np.maximum(energy[m:] - energy[:-m], 1e-9))
    ncc = corr[: local.size] / (local * np.linalg.norm(template))
    cues: list[int] = []
    for hit in np.flatnonzero(ncc >= CUE_MATCH).tolist():
        if not cues or hit - cues[-1] > m:
            cues.append(hit)
    tone = tone_level(samples, rate, TONE_HZ) > REPLY_LEVEL
    at = cues[0] if cues else samples.size
    return Heard(cues, int(tone[:at].sum()), int(tone[at:].sum()))


async def wait_for(predicate, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_the_fragment_fades_the_cue_plays_and_the_whole_answer_plays_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The real runtime: what reaches the speaker and the log when a 1011 cuts a reply
    480 ms in (the emulator streams it in real time; the test is the sound card)."""
    caplog.set_level(logging.INFO, logger="edge_agent")
    options = EmulatorOptions(
        valid_api_keys=("k",),
        pace=1.0,
        espeak=False,
        reply_text="The answer is forty two.",
        connection_faults={0: [FaultSpec("close_1011", after_chunks=12)]},
    )
    question = random.Random(7).randbytes(32_000 // 2 * 2 * 4 // 5)  # 0.8 s of noise
    rate = 24_000
    block = rate // 50

    async def body() -> tuple[np.ndarray, LiveEmulator]:
        emu = LiveEmulator(options)
        await emu.start()
        cfg = Config()
        runtime = Runtime(
            cfg,
            mute_file=MuteFile(tmp_path),
            stop=asyncio.Event(),
            spawn=lambda coro, name: asyncio.get_running_loop().create_task(coro, name=name),
            status_changed=lambda: None,
        )
        runtime.bind(asyncio.get_running_loop())
        runtime.panel = NullPanel()
        gemini = GeminiConfig(base_url=emu.base_url, ca_file=str(emu.ca_pem_path))
        reconnect = ReconnectConfig(initial_delay_s=0.2, max_delay_s=1.0, jitter=0.0)
        runtime.session = LiveSession(
            gemini, reconnect, lambda: "k", tmp_path / "state", runtime.on_live_event
        )
        machine = ConversationMachine(cfg.conversation, barge_in=BargeInRules.from_config(cfg))
        runtime.machine = machine
        runtime.session.start()
        played: list[np.ndarray] = []

        async def sound_card() -> None:  # pulls 20 ms blocks at the device's pace
            start = time.monotonic()
            while True:
                played.append(runtime.playback.output_source(block).copy())
                await asyncio.sleep(max(0.0, start + len(played) * 0.02 - time.monotonic()))

        card = asyncio.get_running_loop().create_task(sound_card())
        try:
            runtime.dispatch(ev.ListenRequested())
            await wait_for(lambda: machine.state == "listening", 10)
            runtime.dispatch(ev.SpeechStarted(0))
            for i in range(0, len(question), 640):
                runtime.session.send_audio(question[i : i + 640])
            runtime.dispatch(ev.SpeechEnded(len(question) // 2))
            await wait_for(lambda: machine.state == "follow_up", 20)
        finally:
            card.cancel()
            await asyncio.wait([card])
            await runtime.session.stop()
            await emu.stop()
        return np.concatenate(played), emu

    samples, emu = asyncio.run(body())
    record = emu.record
    cut, whole = record.replies
    assert not cut.completed and whole.completed and cut.audio_len < whole.audio_len
    (session,) = record.sessions
    assert session.consumed_audio == question and len(session.turns) == 1  # none lost

    heard = what_was_heard(samples, rate)
    whole_samples = whole.audio_len // 2
    print(
        f"heard: fragment {1000 * heard.fragment / rate:.0f} ms of "
        f"{1000 * cut.audio_len / 2 / rate:.0f} ms received, reconnect cue at "
        f"{[round(c / rate, 2) for c in heard.cues]} s, answer {1000 * heard.answer / rate:.0f}"
        f" ms of {1000 * whole_samples / rate:.0f} ms"
    )
    assert len(heard.cues) == 1, heard.cues  # the cue, once
    assert 0 < heard.fragment < cut.audio_len // 2  # part of the fragment played, the rest faded
    # The whole answer, once, after the cue: its length within the tone's fades and 20 ms.
    assert abs(heard.answer - whole_samples) < rate // 50, (heard.answer, whole_samples)

    lines = [r.getMessage() for r in caplog.records if r.name == RUNTIME_LOG]
    transcript = [line for line in lines if "said" in line]
    assert transcript == [
        CUT + cut.text[: len(transcript[0]) - len(CUT)],
        f"you said: {session.turns[0].transcript}",
        "gemini said: The answer is forty two.",
    ], transcript
    assert transcript[0] != CUT.rstrip() + " " and len(transcript[0]) > len(CUT)
    assert any("speaking -> thinking: connection lost mid-reply" in line for line in lines)


# ---- the daemon, end to end ------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.skipif(not speech.espeak_available(), reason="espeak-ng is needed for speech")
def test_daemon_1011_mid_reply_cue_then_the_whole_answer_once(tmp_path: Path) -> None:
    """`edge-agent run` with the shipped config: a 1011 cuts the first reply. The journal
    has one utterance per line, the speaker plays the fragment, the reconnect cue and then
    the whole answer once, every speech frame of the question reaches the server, and a
    SIGTERM afterwards closes the connection with 1000."""
    lead, wake = speech.silence(0.8), speech.trim(speech.synthesize("hey jarvis"))
    asked = speech.trim(speech.synthesize("what is the weather like tomorrow"))
    pause = speech.silence(0.15)
    clip = speech.concat(lead, wake, pause, asked, speech.silence(0.5))
    q_start = lead.size + wake.size + pause.size
    opts = ApplianceOptions(
        emulator_args=[
            "--no-espeak",
            "--reply-text",
            "The answer is forty two.",
            "--fault",
            "0:close_1011:after_chunks=12",
        ],
    )
    with Appliance(tmp_path, opts) as app:
        app.start()
        t0 = time.monotonic()
        app.say(clip)
        cut = app.wait_log(r"speaking -> thinking: connection lost mid-reply", 60, t0)
        assert cut is not None, app.log_text()[-3000:]
        assert app.wait_state("follow_up", 60, cut.t), app.log_text()[-3000:]
        answer = app.wait_log(r"gemini said: ", 10, cut.t)
        assert answer is not None
        rate = app.speaker.rate_hz
        assert app.speaker.wait_samples(app.speaker.samples_played_by(answer.t) + rate // 2, 10)
        samples = app.speaker.samples()
        code, _ = app.stop()
        assert code == 0
        text = app.log_text()
    record = app.record or {}

    said = [
        m.group(1)
        for line in text.splitlines()
        if (m := re.search(r"((?:you|gemini) said.*)$", line))
    ]
    assert len(said) == 3, said  # one utterance per line: nothing run together
    assert said[0].startswith(CUT) and len(said[0]) > len(CUT), said
    assert "The answer is forty two.".startswith(said[0][len(CUT) :]), said
    assert re.fullmatch(r"you said: \(\d+\.\d s of speech\)", said[1]), said
    assert said[2] == "gemini said: The answer is forty two.", said

    replies = record["replies"]
    assert [r["completed"] for r in replies] == [False, True]
    heard = what_was_heard(samples, rate)
    whole = replies[1]["audio_len"] // 2 * rate // 24_000
    print(
        f"daemon heard: fragment {1000 * heard.fragment / rate:.0f} ms, reconnect cue at "
        f"{[round(c / rate, 2) for c in heard.cues]} s, answer "
        f"{1000 * heard.answer / rate:.0f} ms of {1000 * whole / rate:.0f} ms"
    )
    assert len(heard.cues) == 1, heard.cues
    assert 0 < heard.fragment < replies[0]["audio_len"] // 2 * rate // 24_000
    assert abs(heard.answer - whole) < rate // 50, (heard.answer, whole)

    assert [c["close_code"] for c in record["connections"]] == [1011, 1000]
    assert [c["closed_by"] for c in record["connections"]] == ["server", "client"]
    consumed, turns = bench_system.consumed_audio(record)
    assert len(turns) == 1, turns  # asked again once, not twice
    first = np.frombuffer(consumed[: int(turns[0]["audio_bytes"])], dtype="<i2")
    active = bench_system.active_frames(asked)
    starts = q_start + np.flatnonzero(active) * bench_system.FRAME
    covered = bench_system.locate_blocks(first, clip)
    missing = [int(s) for s in starts if not covered[s : s + bench_system.FRAME].any()]
    assert not missing, f"speech frames of the question missing: {missing}"
