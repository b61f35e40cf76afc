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
CUE_HZ = (739.99, 880.0)  # the reconnect cue's two pitches (edge_agent/core/cues.py)
TONE_HZ = 440.0  # the emulator's reply tone (--no-espeak)
# Tone amplitudes that count as playing: the reply tone reaches the speaker at about
# 6500 (0.25 of full scale at volume 80%), the reconnect cue at up to 3900 (0.3 at cue
# volume 40%); each leaks under 300 into the other's detector.
REPLY_LEVEL = 2000.0
CUE_LEVEL = 1000.0


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


def reply_and_cue_runs(
    samples: np.ndarray, rate: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Where the reply tone plays, and where the reconnect cue plays after the first reply
    audio (the wake cue before it has a note near the cue's pitches)."""
    reply = runs(tone_level(samples, rate, TONE_HZ) > REPLY_LEVEL)
    cue_level = np.maximum(*(tone_level(samples, rate, hz) for hz in CUE_HZ))
    cue = [r for r in runs(cue_level > CUE_LEVEL) if reply and r[0] > reply[0][0]]
    return reply, cue


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


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

    reply_runs, cue_runs = reply_and_cue_runs(samples, rate)
    assert cue_runs, "the reconnect cue never played"
    cue_at = cue_runs[0][0]
    duration = render_cue(Cue.RECONNECT).size
    assert cue_runs[-1][1] - cue_at <= duration + rate // 100  # one cue, ~0.19 s
    before = [r for r in reply_runs if r[1] <= cue_at + rate // 100]
    after = [r for r in reply_runs if r[0] > cue_at]
    assert len(before) == 1 and len(after) == 1, reply_runs  # the fragment, then the answer
    fragment, answer = before[0][1] - before[0][0], after[0][1] - after[0][0]
    whole_samples = whole.audio_len // 2
    print(
        f"heard: fragment {1000 * fragment / rate:.0f} ms of {1000 * cut.audio_len / 2 / rate:.0f}"
        f" ms received, cue {1000 * (cue_runs[-1][1] - cue_at) / rate:.0f} ms, answer "
        f"{1000 * answer / rate:.0f} ms of {1000 * whole_samples / rate:.0f} ms"
    )
    assert 0 < fragment < cut.audio_len // 2  # part of the fragment played, the rest faded
    # The whole answer, once: its length within the tone's fades and 10 ms.
    assert abs(answer - whole_samples) < rate // 50, (answer, whole_samples)

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
    reply_runs, cue_runs = reply_and_cue_runs(samples, rate)
    assert cue_runs, "the reconnect cue never played"
    cue_at = cue_runs[0][0]
    before = [r for r in reply_runs if r[1] <= cue_at + rate // 100]
    after = [r for r in reply_runs if r[0] > cue_at]
    assert len(before) == 1 and len(after) == 1, reply_runs  # the fragment, then the answer
    fragment, answer_len = before[0][1] - before[0][0], after[0][1] - after[0][0]
    whole = replies[1]["audio_len"] // 2 * rate // 24_000
    print(
        f"daemon heard: fragment {1000 * fragment / rate:.0f} ms, cue at "
        f"{1000 * (cue_at - before[0][1]) / rate:.0f} ms after it, answer "
        f"{1000 * answer_len / rate:.0f} ms of {1000 * whole / rate:.0f} ms"
    )
    assert 0 < fragment < replies[0]["audio_len"] // 2 * rate // 24_000
    assert abs(answer_len - whole) < rate // 50, (answer_len, whole)

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
