"""CapturePipeline: bounded drop-oldest hand-off, mute, failure counting, ears swap, stop.

Fake ears of our own (the pipeline's only collaborator is our ``Listener`` protocol), and
one run on the real ALSA rig through the real AudioEngine.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from edge_agent.audio.capture import CapturePipeline
from edge_agent.audio.engine import AudioEngine, EngineState
from edge_agent_devkit.rig.alsa_rig import AlsaRig
from edge_agent_devkit.rig.waiting import wait_until as wait_for

pytestmark = pytest.mark.timeout(60)

WAIT_S = 10.0
BLOCK = 160


class FakeEars:
    """Records what it was given; may hold the first call until ``gate`` is set, or raise."""

    def __init__(
        self,
        name: str = "ears",
        gate: threading.Event | None = None,
        fail_at: frozenset[int] = frozenset(),
        quiet_at: frozenset[int] = frozenset(),
    ) -> None:
        self.name = name
        self.gate = gate
        self.fail_at = fail_at
        self.quiet_at = quiet_at  # positions that produce no events
        self.entered = threading.Event()
        self.released = threading.Event()
        self.seen: list[tuple[int, np.ndarray, np.ndarray | None]] = []

    def process(self, mic: np.ndarray, ref: np.ndarray | None, sample_pos: int) -> list[object]:
        self.entered.set()
        if self.gate is not None and not self.released.is_set():
            self.gate.wait(WAIT_S)
            self.released.set()
        if sample_pos in self.fail_at:
            raise RuntimeError(f"model broke at {sample_pos}")
        self.seen.append((sample_pos, mic, ref))
        return [] if sample_pos in self.quiet_at else [(self.name, sample_pos)]

    @property
    def positions(self) -> list[int]:
        return [pos for pos, _, _ in self.seen]


class Events:
    """on_events stand-in (the daemon's hands them to the event loop)."""

    def __init__(self) -> None:
        self.batches: list[list[object]] = []

    def __call__(self, events: list[object]) -> None:
        self.batches.append(list(events))


def block(pos: int) -> tuple[np.ndarray, np.ndarray, int]:
    return np.full(BLOCK, pos // BLOCK, np.int16), np.zeros(BLOCK, np.int16), pos


@pytest.fixture
def pipelines():
    made: list[CapturePipeline] = []
    yield made
    for pipe in made:
        pipe.stop()


def started(pipelines, ears, events=None, **kw) -> CapturePipeline:
    pipe = CapturePipeline(ears, events if events is not None else Events(), **kw)
    pipelines.append(pipe)
    pipe.start()
    return pipe


def test_constructor_starts_nothing_and_start_needs_ears():
    pipe = CapturePipeline(None, Events())
    assert not pipe.running and pipe.worker_thread_id is None
    with pytest.raises(RuntimeError):
        pipe.start()
    assert pipe.stop()  # never started: nothing to wait for
    with pytest.raises(ValueError):
        CapturePipeline(None, Events(), max_blocks=0)


def test_blocks_reach_the_ears_in_order_and_only_events_go_on(pipelines):
    ears, events = FakeEars(quiet_at=frozenset({BLOCK})), Events()
    pipe = started(pipelines, ears, events)
    for pos in range(0, 5 * BLOCK, BLOCK):
        pipe.on_block(*block(pos))
    assert wait_for(lambda: pipe.processed_blocks == 5)
    assert ears.positions == [0, 160, 320, 480, 640]
    assert all(int(mic[0]) == pos // BLOCK for pos, mic, _ in ears.seen)
    # one batch per block that produced events; the quiet block's empty list is not handed on
    assert events.batches == [[("ears", p)] for p in (0, 320, 480, 640)]
    assert pipe.capture_pos == 800 and pipe.dropped_blocks == 0


def test_full_queue_drops_the_oldest_and_counts_each_drop(pipelines):
    gate = threading.Event()
    ears = FakeEars(gate=gate)
    pipe = started(pipelines, ears, max_blocks=3)
    pipe.on_block(*block(0))
    assert ears.entered.wait(WAIT_S)  # the worker holds block 0 inside ears.process
    for k in range(1, 11):
        pipe.on_block(*block(k * BLOCK))
    assert pipe.dropped_blocks == 7 and pipe.queued_blocks == 3  # blocks 1..7 went
    gate.set()
    assert wait_for(lambda: pipe.processed_blocks == 4)
    assert ears.positions == [0, 8 * BLOCK, 9 * BLOCK, 10 * BLOCK]  # the newest survived
    assert pipe.capture_pos == 11 * BLOCK


def test_muted_processes_nothing_but_the_capture_position_advances(pipelines):
    ears, events = FakeEars(), Events()
    pipe = started(pipelines, ears, events)
    pipe.muted = True
    for pos in range(0, 4 * BLOCK, BLOCK):
        pipe.on_block(*block(pos))
    assert wait_for(lambda: pipe.capture_pos == 4 * BLOCK)
    assert ears.seen == [] and events.batches == [] and pipe.processed_blocks == 0
    pipe.muted = False
    pipe.on_block(*block(4 * BLOCK))
    assert wait_for(lambda: pipe.processed_blocks == 1)
    assert ears.positions == [4 * BLOCK] and pipe.capture_pos == 5 * BLOCK


def test_ears_failures_are_all_counted_and_only_the_first_logged(pipelines, caplog):
    caplog.set_level(logging.ERROR, logger="edge_agent.audio.capture")
    ears = FakeEars(fail_at=frozenset({0, 160, 480}))
    pipe = started(pipelines, ears)
    for pos in range(0, 5 * BLOCK, BLOCK):
        pipe.on_block(*block(pos))
    assert wait_for(lambda: pipe.processed_blocks == 5)
    assert pipe.ears_failures == 3
    assert ears.positions == [320, 640]  # the worker goes on after each failure
    records = [r for r in caplog.records if r.name == "edge_agent.audio.capture"]
    assert len(records) == 1 and records[0].exc_info is not None
    assert "model broke at 0" in caplog.text and "model broke at 160" not in caplog.text


def test_a_failing_events_callback_does_not_stop_the_worker(pipelines):
    def broken(events: list[object]) -> None:
        raise RuntimeError("event loop closed")

    ears = FakeEars()
    pipe = started(pipelines, ears, broken)
    for pos in range(0, 3 * BLOCK, BLOCK):
        pipe.on_block(*block(pos))
    assert wait_for(lambda: pipe.processed_blocks == 3)
    assert pipe.handoff_failures == 3 and pipe.running and ears.positions == [0, 160, 320]


def test_swapped_ears_take_the_next_block(pipelines):
    old, new, events = FakeEars("old"), FakeEars("new"), Events()
    pipe = started(pipelines, old, events)
    pipe.on_block(*block(0))
    assert wait_for(lambda: pipe.processed_blocks == 1)
    pipe.set_ears(new)  # what the daemon does after a reload built new ears
    assert pipe.ears is new
    pipe.on_block(*block(BLOCK))
    assert wait_for(lambda: pipe.processed_blocks == 2)
    assert old.positions == [0] and new.positions == [BLOCK]
    assert events.batches == [[("old", 0)], [("new", BLOCK)]]


def test_stop_is_bounded_while_the_ears_are_stuck(pipelines):
    gate = threading.Event()
    ears = FakeEars(gate=gate)
    pipe = started(pipelines, ears, join_timeout_s=0.2)
    pipe.on_block(*block(0))
    assert ears.entered.wait(WAIT_S)
    t0 = time.monotonic()
    assert pipe.stop() is False  # still inside ears.process
    assert time.monotonic() - t0 < 1.0  # bound 0.2 s; generous for a loaded machine
    gate.set()
    assert wait_for(lambda: not pipe.running)  # it finishes its block and ends
    pipe.on_block(*block(BLOCK))
    time.sleep(0.3)
    assert ears.positions == [0]  # nothing is processed after stop
    # idle worker: stop returns as soon as it wakes from its queue wait
    idle = started(pipelines, FakeEars())
    t0 = time.monotonic()
    assert idle.stop() is True and time.monotonic() - t0 < 1.0


def test_on_the_rig_a_slow_listener_loses_the_oldest_blocks_not_the_newest(tmp_path):
    """Real AudioEngine over a real-time ALSA FIFO into the pipeline: the ears stall on
    the first block, the queue (5 blocks) overflows, and once they move again they get
    exactly the 5 newest blocks, byte-exact, with every other block counted as dropped."""
    rig = AlsaRig(tmp_path / "rig")
    data = np.random.default_rng(21).integers(-8000, 8000, 16000 * 3, dtype=np.int16)
    rig.add_fifo_capture("mic", 16000, source=data)
    rig.start()
    gate, events = threading.Event(), Events()
    ears = FakeEars(gate=gate)
    pipe = CapturePipeline(ears, events, max_blocks=5)
    engine = AudioEngine(input_device="mic", output_device=None, on_block=pipe.on_block)
    try:
        pipe.start()
        assert engine.start() is EngineState.RUNNING
        assert wait_for(lambda: pipe.dropped_blocks >= 20)
        engine.stop()
        captured = engine.captured_samples
        assert captured <= len(data) - BLOCK  # stopped inside the known audio
        gate.set()
        assert wait_for(lambda: pipe.processed_blocks == 6)
        assert pipe.stop()
    finally:
        engine.stop()
        pipe.stop()
        rig.stop()
    newest = list(range(captured - 5 * BLOCK, captured, BLOCK))
    assert ears.positions == [0, *newest]
    assert pipe.dropped_blocks == captured // BLOCK - 6
    assert pipe.capture_pos == captured and pipe.ears_failures == 0
    for pos, mic, ref in ears.seen:
        assert ref is None and np.array_equal(mic, data[pos : pos + BLOCK])
    assert [batch[0][1] for batch in events.batches] == ears.positions


class GridEars(FakeEars):
    """Fake ears that, like the real ones waiting for the wake word, only need the blocks
    reaching phase + k * period; everything else may be handed over with them."""

    def __init__(self, grid: tuple[int, int] | None) -> None:
        super().__init__()
        self.due_grid = grid


def test_idle_blocks_wait_for_the_grid_and_go_over_in_one_call(pipelines):
    ears, events = GridEars((5 * BLOCK, 8 * BLOCK)), Events()
    pipe = started(pipelines, ears, events, poll_s=30.0)  # no timed wake-ups in this test
    assert pipe.on_block(*block(0)) is pipe and pipe.hold_grid == (5 * BLOCK, 8 * BLOCK)
    for pos in range(BLOCK, 4 * BLOCK, BLOCK):
        pipe.on_block(*block(pos))
    time.sleep(0.05)  # nothing reached 5 * BLOCK: the worker was not woken
    assert ears.seen == [] and pipe.queued_blocks == 4
    pipe.on_block(*block(4 * BLOCK))  # ends at 5 * BLOCK: due
    assert wait_for(lambda: pipe.processed_blocks == 5)
    assert ears.positions == [0]  # one call, the five blocks joined in order
    mic, ref = ears.seen[0][1], ears.seen[0][2]
    assert np.array_equal(mic, np.repeat(np.arange(5, dtype=np.int16), BLOCK))
    assert ref is not None and ref.size == 5 * BLOCK and pipe.capture_pos == 5 * BLOCK
    # A block with playback in its reference is never joined with others.
    loud = np.full(BLOCK, 300, np.int16)
    for k in range(5, 13):
        mic_k, ref_k, pos = block(k * BLOCK)
        pipe.on_block(mic_k, loud if k == 9 else ref_k, pos)
    assert wait_for(lambda: pipe.processed_blocks == 13)
    assert ears.positions == [0, 5 * BLOCK, 9 * BLOCK, 10 * BLOCK]
    assert [len(m) for _, m, _ in ears.seen] == [5 * BLOCK, 4 * BLOCK, BLOCK, 3 * BLOCK]
    # No grid (the ears need every block): each block on its own, as it comes; muted:
    # nothing to hold for.
    ears.due_grid = None
    for k in range(13, 15):
        pipe.on_block(*block(k * BLOCK))
    assert wait_for(lambda: pipe.processed_blocks == 15)
    assert ears.positions[-2:] == [13 * BLOCK, 14 * BLOCK] and pipe.hold_grid is None
    ears.due_grid = (0, 1280)
    pipe.muted = True
    assert pipe.hold_grid is None


def test_a_wrong_grid_delays_a_block_by_at_most_max_coalesce_blocks(pipelines):
    ears = GridEars((10**9, 1280))  # a grid point that never comes
    pipe = started(pipelines, ears, max_coalesce=3, poll_s=30.0)
    for k in range(2):
        pipe.on_block(*block(k * BLOCK))
    time.sleep(0.05)
    assert ears.seen == []
    pipe.on_block(*block(2 * BLOCK))  # the third waiting block wakes the worker
    assert wait_for(lambda: pipe.processed_blocks == 3)
    assert ears.positions == [0] and len(ears.seen[0][1]) == 3 * BLOCK
