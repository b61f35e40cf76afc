"""The running conversation: events in, the machine's actions out to the devices.

Data flow::

    sound card thread --on_block--> CapturePipeline: bounded queue --> ears worker thread
        (AEC, wake word, VAD gate, barge-in) --call_soon_threadsafe--> event loop
    event loop: ConversationMachine.handle(event) -> actions -> session / ears / LEDs / cues
    LiveSession events: model audio -> JitterBuffer <--pull-- sound card thread

Threads exist only at the edges (sound card, ears worker, gpiozero); everything they
report becomes an event on the asyncio loop, where the state machine decides. Nothing on
the loop blocks: file writes and LED changes run in worker threads. The lifecycle
(`app.daemon`) builds the components and installs them here; `app.health` reads them.

Kitchen timers (`app.abilities`) report to `on_timer_event`: a ring becomes `TimerRang`
for the machine (and, with a session open, a notice the model speaks when the device is
free); the end of every ring becomes `TimerRingStopped`. Transcripts are logged once per
utterance, whole, with journal fields, and appended to the history file when it is on.
A dropped connection ends the transcript of a reply it cut (logged at once, marked as cut
off); the question is transcribed again when it is asked again, and that transcription
replaces the first instead of running on from it (see `TurnTranscript.connection_lost`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edge_agent.abilities.history import Utterance
from edge_agent.abilities.timers import RingEnded, StopReason, TimerEvent, TimerFired
from edge_agent.app.playback import ReplyPlayback
from edge_agent.audio.capture import CapturePipeline
from edge_agent.config import Config
from edge_agent.core import events as ev
from edge_agent.core import state as st
from edge_agent.core.cues import Cue
from edge_agent.statefile import save_file

if TYPE_CHECKING:  # the real classes load lazily: their imports are the slow part of startup
    from edge_agent.app.abilities import Abilities
    from edge_agent.audio.ears import Ears
    from edge_agent.audio.engine import AudioEngine
    from edge_agent.device.gpio import GpioPanel, NullPanel
    from edge_agent.live.session import LiveSession

log = logging.getLogger(__name__)

MUTE_FILE = "muted"
# A turn that never completes, or a hostile server's huge pieces, must not grow memory for
# ever: a turn's line keeps its newest pieces, at most this many characters (a spoken
# minute is about 1,000).
TRANSCRIPT_MAX_PIECES = 1000
TRANSCRIPT_MAX_CHARS = 20_000
ANNOUNCE_INSTRUCTION = (
    "Say exactly the following words to the people in the room, word for word, and nothing else: "
)
TIMER_NOTICE = (
    "(A message from the device, not from the user: the {label} has just ended and is "
    "ringing. Tell the user in a few words.)"
)

Spawn = Callable[[Coroutine[Any, Any, Any], str], None]
_Part = TypeVar("_Part")


class Runtime:
    """Carries out what the conversation machine decides, on the event loop thread.

    The components are None until the lifecycle has started them; an action that needs
    a missing one fails and is logged, as any failed action is.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        mute_file: MuteFile,
        stop: asyncio.Event,
        spawn: Spawn,
        status_changed: Callable[[], None],
    ) -> None:
        self.playback = ReplyPlayback(cfg, on_drained=self._on_drained)
        self.machine: st.ConversationMachine | None = None
        self.ears: Ears | None = None
        self.session: LiveSession | None = None
        self.panel: GpioPanel | NullPanel | None = None
        self.engine: AudioEngine | None = None
        self.abilities: Abilities | None = None
        self.mute_file = mute_file
        self.last_error: str | None = None  # shown in STATUS= and `edge-agent status`
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = stop  # set: the daemon is stopping, events are no longer handled
        self._spawn = spawn
        self._status_changed = status_changed
        self._timers = Timers(self._fire_timer)
        self._transcript = TurnTranscript()
        self._turn_sent_at: float | None = None  # the user's turn (or text) went up
        self._first_audio_at: float | None = None  # first reply audio after it
        self._led_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="leds")
        self.capture = CapturePipeline(
            None, self._ear_events_to_loop, max_blocks=cfg.audio.capture_queue_blocks
        )

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that device threads hand their events to."""
        self._loop = loop
        self.playback.loop = loop

    def close(self) -> None:
        """Shutdown, after the session and the audio engine stopped: LEDs end dark."""
        self.capture.stop()  # bounded join
        self._led_executor.shutdown(wait=True, cancel_futures=True)
        if self.panel is not None:
            self.panel.close()

    def started_panel(self) -> GpioPanel | NullPanel:
        """The panel, which exists from startup on (`require` cannot keep the union)."""
        if self.panel is None:
            raise RuntimeError("panel not started")
        return self.panel

    def cancel_timers(self) -> None:
        self._timers.cancel_all()

    def use_ears(self, ears: Ears) -> None:
        """New ears (a reload built them) take over from the next block on."""
        self.ears = ears
        self.capture.set_ears(ears)
        self.sync_ears()

    # --------------------------------------------------------------- device edge

    def start_capture(self) -> None:
        """The ears worker thread starts listening to what the engine captures."""
        self.capture.set_ears(require(self.ears, "ears"))
        self.capture.start()

    def _ear_events_to_loop(self, events: list[ev.EarEvent]) -> None:
        """Ears worker thread (CapturePipeline): hand the events to the event loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_ear_events, events)

    # ----------------------------------------------------------------- events in

    def _on_ear_events(self, events: list[ev.EarEvent]) -> None:
        """Ears events are the machine's own vocabulary; only uplink audio goes elsewhere."""
        for event in events:
            if isinstance(event, ev.UplinkAudio):
                if self.machine is not None and self.machine.policy.uplink_open:
                    require(self.session, "Live session").send_audio(event.pcm)
            else:
                self.dispatch(event)

    def on_live_event(self, event: ev.LiveEvent) -> None:
        """Session events go to the machine as they are; the runtime keeps the bookkeeping
        of playback, transcripts and status that the machine has no say in."""
        machine = self.machine
        if machine is None:
            return
        match event:
            case ev.ModelAudioReceived(pcm24k=pcm):
                # The machine first: a chunk may start a reply nobody asked for (a
                # non-blocking tool's answer spoken when idle); it decides what is stale.
                self.dispatch(event)
                if machine.policy.reply_audio_stale:
                    return  # the rest of a reply the user barged into
                if self._first_audio_at is None and self._turn_sent_at is not None:
                    self._first_audio_at = time.monotonic()
                self.playback.push(pcm)
                return
            case ev.InputTranscript(text=text):
                self._transcript.heard(text)
                return
            case ev.OutputTranscript(text=text):
                if not machine.policy.reply_audio_stale:  # else: the words of a dropped reply
                    self._transcript.said(text)
                return
            case ev.ToolCalled(name=name, args=args):
                log.info("tool call: %s(%.300s)", name, args)  # arguments may be huge
                return
            case ev.TurnCompleted():
                self._log_transcript()
                self.playback.turn_completed()
            case ev.ServerInterrupted():
                log.info("server: interrupted")
            case ev.SessionReady():
                self.last_error = None
            case ev.GoAwayReceived(time_left_s=left):
                log.info("server: goAway, %.0f s left: handing over", left)
            case ev.SessionLost(reason=reason, fatal=fatal):
                self.last_error = reason
                self._transcript_cut(asked_again=not fatal)
        self.dispatch(event)
        if isinstance(event, ev.TurnCompleted) and self.playback.jitter.is_idle:
            self.dispatch(ev.PlaybackDrained())
        if isinstance(event, ev.SessionReady | ev.SessionLost | ev.SessionClosed):
            self._status_changed()  # not per audio chunk: STATUS= is a datagram each time

    def _on_drained(self) -> None:
        self.dispatch(ev.PlaybackDrained())

    # ------------------------------------------------------------ state machine

    def dispatch(self, event: Any) -> None:
        """Feed one event to the state machine and carry out its actions (loop thread)."""
        machine = self.machine
        if machine is None or self._stop.is_set():
            return
        actions = machine.handle(event, time.monotonic())
        for t in machine.last_transitions:
            log.info("state %s -> %s: %s", t.from_state, t.to_state, t.reason)
        self.run_actions(actions)
        self.sync_ears()
        if machine.last_transitions:
            self._status_changed()

    def run_actions(self, actions: list[Any]) -> None:
        for action in actions:
            try:
                self._run_action(action)
            except Exception:
                log.exception("action %s failed", type(action).__name__)

    def _run_action(self, action: Any) -> None:
        match action:
            case st.OpenSession():
                require(self.session, "Live session").open()
            case st.CloseSession():
                require(self.session, "Live session").close()
            case st.SendActivityStart():
                require(self.session, "Live session").activity_start()
            case st.SendActivityEnd():
                require(self.session, "Live session").activity_end()
                self._turn_went_up()
            case st.SendText(text=text):
                require(self.session, "Live session").send_text(text)
                self._turn_went_up()
            case st.StopRinging(reason=reason):
                if self.playback.cues.current is Cue.TIMER:
                    self.playback.cues.stop()  # the chime under way fades now, not in 0.4 s
                timers = require(self.abilities, "abilities").timers
                self._spawn(timers.stop_ringing(StopReason(reason)), "stop-ringing")
            case st.FlushPlayback():
                discarded = self.playback.flush()
                written = self.engine.played_device_samples if self.engine is not None else 0
                log.info(
                    "playback flushed at output sample %d, t=%.6f (%d reply samples dropped)",
                    written,
                    time.monotonic(),
                    discarded,
                )
            case st.InterruptSession():
                require(self.session, "Live session").interrupt()
            case st.ShowLeds(pattern=pattern):
                # gpiozero may join a blink thread: off the loop, in order.
                self._led_executor.submit(self.started_panel().show, pattern)
            case st.PlayCue(name=name):
                self.playback.cues.play(name)
            case st.SetTimer(name=name, at=at):
                self._timers.set(str(name), at)
            case st.CancelTimer(name=name):
                self._timers.cancel(str(name))
            case st.PersistMute(muted=muted):
                self._spawn(asyncio.to_thread(self.mute_file.save, muted), "persist-mute")
            case st.SetMicMuted(muted=muted):
                self.capture.muted = muted
            case _:
                log.debug("unhandled action %r", action)

    def sync_ears(self) -> None:
        """Hand the machine's policy to the ears (after every event, and to new ears
        after a reload); they carry it out from the next block on."""
        if self.machine is not None and self.ears is not None:
            self.ears.apply(self.machine.policy)

    def _fire_timer(self, name: str) -> None:
        self.dispatch(ev.TimerFired(name))

    # ---------------------------------------------------- timers, text, transcripts

    def on_timer_event(self, event: TimerEvent) -> None:
        """The timer service's events (loop thread): the machine learns of every ring."""
        if isinstance(event, TimerFired):
            timer = event.timer
            label = f"timer {timer.name!r}" if timer.name else timer.label
            self.dispatch(ev.TimerRang(label))
            machine = self.machine
            if machine is not None and machine.session_open:
                notice = TIMER_NOTICE.format(label=label)
                self.dispatch(ev.TextTurnRequested(notice, ev.TextTurnKind.NOTICE))
        elif isinstance(event, RingEnded):
            abilities = self.abilities
            if abilities is None or not abilities.timers.book.is_ringing:
                self.dispatch(ev.TimerRingStopped(event.reason.value))

    def request_text_turn(self, text: str, kind: ev.TextTurnKind) -> str | None:
        """`edge-agent say` / `announce`; returns why it cannot be done, or None."""
        machine = self.machine
        if machine is None:
            return "the device is still starting"
        if machine.state in (st.AgentState.MUTED, st.AgentState.ERROR, st.AgentState.OFFLINE):
            return f"the device is {machine.state} and cannot speak now"
        if kind is ev.TextTurnKind.ANNOUNCE:
            text = ANNOUNCE_INSTRUCTION + text
        self.dispatch(ev.TextTurnRequested(text, kind))
        return None

    def _turn_went_up(self) -> None:
        self._turn_sent_at = time.monotonic()
        self._first_audio_at = None

    def _transcript_cut(self, asked_again: bool) -> None:
        """The connection dropped: the reply in progress (if any) ends here, and the reply
        to a question asked again is measured from its own first audio."""
        utterances = self._transcript.connection_lost(asked_again=asked_again)
        self._first_audio_at = None
        if not asked_again:
            self._turn_sent_at = None
        self._append_history(utterances)

    def _log_transcript(self) -> None:
        latency: dict[str, float] = {}
        sent, first = self._turn_sent_at, self._first_audio_at
        if sent is not None and first is not None:
            latency["first_audio_ms"] = 1000 * (first - sent)
            latency["turn_ms"] = 1000 * (time.monotonic() - sent)
        utterances = self._transcript.log_and_clear(latency)
        self._turn_sent_at = self._first_audio_at = None
        self._append_history(utterances)

    def _append_history(self, utterances: list[Utterance]) -> None:
        history = self.abilities.history if self.abilities is not None else None
        if history is not None and utterances:
            self._spawn(asyncio.to_thread(_append_all, history, utterances), "history")


def require(part: _Part | None, what: str) -> _Part:
    """A component the caller needs; None only before startup built it."""
    if part is None:
        raise RuntimeError(f"{what} not started")
    return part


class Timers:
    """The machine's named timers on the event loop; setting one again replaces it."""

    def __init__(self, fire: Callable[[str], None]) -> None:
        self._fire = fire
        self._handles: dict[str, asyncio.TimerHandle] = {}

    def set(self, name: str, at: float) -> None:
        """`at` is on the time.monotonic clock the machine is given."""
        self.cancel(name)
        loop = asyncio.get_running_loop()
        delay = max(0.0, at - time.monotonic())
        self._handles[name] = loop.call_later(delay, self._fired, name)

    def cancel(self, name: str) -> None:
        handle = self._handles.pop(name, None)
        if handle is not None:
            handle.cancel()

    def cancel_all(self) -> None:
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()

    def _fired(self, name: str) -> None:
        self._handles.pop(name, None)
        self._fire(name)


class TurnTranscript:
    """What was said in a turn, logged in one line per side when the turn completes.

    Each line carries journal fields (TRANSCRIPT_ROLE, TRANSCRIPT_TURN, TRANSCRIPT_TEXT,
    and LATENCY_* on the model's side); the returned utterances go to the history file.
    A reply cut by a dropped connection gets a line of its own, marked (TRANSCRIPT_CUT),
    and stays out of the history: its answer comes again whole, or not at all.
    """

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self._heard: list[str] = []
        self._said: list[str] = []
        self._heard_superseded = False  # the question is asked again: new words replace
        self._wall_clock = wall_clock
        self.turn = 0  # turns with words, since the daemon started

    def heard(self, text: str) -> None:
        if self._heard_superseded:
            self._heard_superseded = False
            self._heard.clear()
        _append_bounded(self._heard, text)

    def connection_lost(self, *, asked_again: bool) -> list[Utterance]:
        """A connection dropped before the turn completed. What the model had said of its
        reply is logged now, as cut off. When the question is ``asked_again`` (a non-fatal
        loss: the session re-sends an unanswered turn), its new transcription replaces
        what was heard so far; otherwise what was heard is logged now too. Returns the
        utterances for the history file."""
        said = "".join(self._said).strip()
        self._said.clear()
        if said:
            turn = self.turn + 1  # the turn it belongs to: its whole lines come later
            fields = {
                "TRANSCRIPT_ROLE": "model",
                "TRANSCRIPT_TURN": turn,
                "TRANSCRIPT_TEXT": said,
                "TRANSCRIPT_CUT": "dropped connection",
            }
            log.info("gemini said (cut off by a dropped connection): %s", said, extra=fields)
        if asked_again:
            self._heard_superseded = bool(self._heard)
            return []
        return self.log_and_clear()

    def said(self, text: str) -> None:
        _append_bounded(self._said, text)

    def log_and_clear(self, latency_ms: dict[str, float] | None = None) -> list[Utterance]:
        heard, said = "".join(self._heard).strip(), "".join(self._said).strip()
        self._heard.clear()
        self._said.clear()
        self._heard_superseded = False
        if not heard and not said:
            return []
        self.turn += 1
        now = self._wall_clock()
        out = []
        if heard:
            out.append(Utterance("user", heard, self.turn, now))
        if said:
            out.append(Utterance("model", said, self.turn, now, dict(latency_ms or {})))
        for utterance in out:
            who = "you said" if utterance.role == "user" else "gemini said"
            fields: dict[str, Any] = {
                "TRANSCRIPT_ROLE": utterance.role,
                "TRANSCRIPT_TURN": utterance.turn,
                "TRANSCRIPT_TEXT": utterance.text,
            }
            for key, value in utterance.latency_ms.items():
                fields[f"LATENCY_{key.upper()}"] = round(value, 1)
            log.info("%s: %s", who, utterance.text, extra=fields)
        return out


def _append_all(history: Any, utterances: list[Utterance]) -> None:
    """Worker thread: one history line per utterance."""
    for utterance in utterances:
        history.append(utterance)


def _append_bounded(pieces: list[str], text: str) -> None:
    """Collect transcript pieces for the turn's log line, keeping only the newest."""
    pieces.append(text[-TRANSCRIPT_MAX_CHARS:])
    if len(pieces) > TRANSCRIPT_MAX_PIECES:
        del pieces[: len(pieces) - TRANSCRIPT_MAX_PIECES]
    excess = sum(map(len, pieces)) - TRANSCRIPT_MAX_CHARS
    while excess > 0:  # drop the oldest words first
        if len(pieces[0]) > excess:
            pieces[0] = pieces[0][excess:]
            break
        excess -= len(pieces.pop(0))


class MuteFile:
    """The mute switch survives a restart: "1" or "0" in a file in the state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / MUTE_FILE

    def load(self) -> bool:
        try:
            return self.path.read_text().strip() == "1"
        except OSError:
            return False

    def save(self, muted: bool) -> None:
        save_file(self.path, b"1\n" if muted else b"0\n", "mute")  # logs, retries on failure
