"""GpioPanel against gpiozero's mock pin factory; NullPanel fallback when GPIO is unusable."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from gpiozero import LED, Device
from gpiozero.pins.mock import MockFactory, MockPin, MockPWMPin

from edge_agent.config import GpioConfig
from edge_agent.core.events import ButtonEvent, ButtonHeld, ButtonPressed, ButtonReleased
from edge_agent.core.leds import OFF, ON, Blink, LedPattern, On, Pulse, pattern_for
from edge_agent.core.state import AgentState
from edge_agent.device.gpio import GpioPanel, NullPanel, open_panel
from edge_agent_devkit.rig.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

CFG = GpioConfig(
    enabled=True,
    button_pin="GPIO17",
    button_pull_up=True,
    button_bounce_ms=50,
    hold_s=0.3,
    status_led_pin="GPIO18",
    listen_led_pin="GPIO23",
    mute_led_pin="GPIO24",
    led_active_high=True,
)
PINS = {"status": "GPIO18", "listen": "GPIO23", "mute": "GPIO24"}


class Recorder:
    """Counts button callbacks; events let a test wait for the hold thread."""

    def __init__(self) -> None:
        self.presses = 0
        self.holds = 0
        self.releases = 0
        self.pressed = threading.Event()
        self.held = threading.Event()

    def press(self) -> None:
        self.presses += 1
        self.pressed.set()

    def hold(self) -> None:
        self.holds += 1
        self.held.set()

    def release(self) -> None:
        self.releases += 1

    def __call__(self, event: ButtonEvent) -> None:
        """The panel's one sink: the core's own button events."""
        match event:
            case ButtonPressed():
                self.press()
            case ButtonHeld():
                self.hold()
            case ButtonReleased():
                self.release()


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    f.reset()
    f.close()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def panel(factory: MockFactory, rec: Recorder) -> Iterator[GpioPanel]:
    p = GpioPanel(CFG, rec, factory)
    p.open()
    yield p
    p.close()


def pin(factory: MockFactory, name: str) -> MockPin:
    return factory.pin(name)


def led_states(factory: MockFactory) -> dict[str, float]:
    return {name: float(pin(factory, p).state) for name, p in PINS.items()}


# ------------------------------------------------------------------- button


def test_press_is_reported_at_press_time_not_release(
    panel: GpioPanel, factory: MockFactory, rec: Recorder
) -> None:
    button = pin(factory, "GPIO17")
    assert button.state  # pull-up: high when idle
    button.drive_low()
    assert (rec.presses, rec.releases) == (1, 0)  # before any release: barge-in at once
    button.drive_high()
    assert (rec.presses, rec.releases) == (1, 1)  # the release (idle acts on it) follows


def test_hold_fires_once_after_hold_time_and_follows_its_press(
    panel: GpioPanel, factory: MockFactory, rec: Recorder
) -> None:
    button = pin(factory, "GPIO17")
    button.drive_low()
    assert rec.held.wait(timeout=10), "when_held never fired"
    assert (rec.presses, rec.holds) == (1, 1)
    time.sleep(3 * CFG.hold_s)  # still held: hold_repeat is off
    button.drive_high()
    assert (rec.presses, rec.holds, rec.releases) == (1, 1, 1)


def test_short_press_never_becomes_a_hold(
    panel: GpioPanel, factory: MockFactory, rec: Recorder
) -> None:
    button = pin(factory, "GPIO17")
    button.drive_low()
    button.drive_high()
    time.sleep(3 * CFG.hold_s)
    assert (rec.presses, rec.holds) == (1, 0)


def test_software_debounce_turns_chatter_into_one_press(
    factory: MockFactory, rec: Recorder
) -> None:
    clock = FakeClock()
    p = GpioPanel(CFG, rec, factory, clock=clock)
    p.open()
    try:
        button = pin(factory, "GPIO17")
        for _ in range(5):  # contacts chattering for 10 ms on press
            button.drive_low()
            clock.t += 0.001
            button.drive_high()
            clock.t += 0.001
        button.drive_low()
        assert rec.presses == 1
        clock.t += 0.4
        for _ in range(3):  # and on release
            button.drive_high()
            clock.t += 0.002
            button.drive_low()
            clock.t += 0.002
        button.drive_high()
        assert rec.presses == 1
        clock.t += 0.049  # 49 ms after release: still bounce
        button.drive_low()
        button.drive_high()
        assert rec.presses == 1
        clock.t += 0.2  # a real second press
        button.drive_low()
        assert rec.presses == 2
        button.drive_high()
        # One release per counted press: the chatter's releases are not reported.
        assert rec.releases == 2
    finally:
        p.close()


def test_software_debounce_with_the_real_clock(factory: MockFactory, rec: Recorder) -> None:
    # A 1 s bounce window: the burst below takes far less even on a loaded machine.
    p = GpioPanel(replace(CFG, button_bounce_ms=1000), rec, factory)
    p.open()
    try:
        button = pin(factory, "GPIO17")
        for _ in range(10):
            button.drive_low()
            button.drive_high()
        assert rec.presses == 1
    finally:
        p.close()


def test_zero_bounce_counts_every_press(factory: MockFactory, rec: Recorder) -> None:
    clock = FakeClock()
    p = GpioPanel(replace(CFG, button_bounce_ms=0), rec, factory, clock=clock)
    p.open()
    try:
        button = pin(factory, "GPIO17")
        for _ in range(4):
            button.drive_low()
            button.drive_high()
        assert rec.presses == 4
    finally:
        p.close()


def test_pull_down_button_is_pressed_by_driving_high(factory: MockFactory, rec: Recorder) -> None:
    p = GpioPanel(replace(CFG, button_pull_up=False), rec, factory)
    p.open()
    try:
        button = pin(factory, "GPIO17")
        assert not button.state
        button.drive_high()
        assert rec.presses == 1
        button.drive_low()
    finally:
        p.close()


def test_a_failing_callback_is_logged_and_the_next_press_still_works(
    factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def bad_press(event: ButtonEvent) -> None:
        if not isinstance(event, ButtonPressed):
            return
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("daemon bug")

    p = GpioPanel(replace(CFG, button_bounce_ms=0), bad_press, factory)
    p.open()
    try:
        button = pin(factory, "GPIO17")
        with caplog.at_level(logging.ERROR, logger="edge_agent.device.gpio"):
            button.drive_low()
            button.drive_high()
        assert "button event ButtonPressed: handler failed" in caplog.text
        button.drive_low()
        button.drive_high()
        assert len(calls) == 2
    finally:
        p.close()


def test_hold_reaches_an_asyncio_loop_through_call_soon_threadsafe(factory: MockFactory) -> None:
    """The wiring the daemon uses: gpiozero threads hand events to the loop."""

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[str] = asyncio.Queue(maxsize=10)
        p = GpioPanel(
            CFG,
            emit=lambda event: loop.call_soon_threadsafe(events.put_nowait, type(event).__name__),
            pin_factory=factory,
        )
        p.open()
        try:
            button = pin(factory, "GPIO17")
            # Press from another thread, as lgpio's callback thread would.
            await asyncio.to_thread(button.drive_low)
            got = [
                await asyncio.wait_for(events.get(), 10),
                await asyncio.wait_for(events.get(), 10),
            ]
            await asyncio.to_thread(button.drive_high)
            return got
        finally:
            p.close()

    assert asyncio.run(main()) == ["ButtonPressed", "ButtonHeld"]


# --------------------------------------------------------------------- LEDs


def test_steady_patterns_set_the_pins(panel: GpioPanel, factory: MockFactory) -> None:
    panel.show(LedPattern(status=ON, listen=OFF, mute=ON))
    assert led_states(factory) == {"status": 1.0, "listen": 0.0, "mute": 1.0}
    panel.show(LedPattern(status=OFF, listen=ON, mute=OFF))
    assert led_states(factory) == {"status": 0.0, "listen": 1.0, "mute": 0.0}


def test_active_low_leds_are_inverted(factory: MockFactory, rec: Recorder) -> None:
    p = GpioPanel(replace(CFG, led_active_high=False), rec, factory)
    p.open()
    try:
        assert led_states(factory) == {"status": 1.0, "listen": 1.0, "mute": 1.0}  # all off
        p.show(LedPattern(listen=ON))
        assert led_states(factory) == {"status": 1.0, "listen": 0.0, "mute": 1.0}
        listen = pin(factory, PINS["listen"])
        listen.clear_states()
    finally:
        p.close()
    # Turned off (driven high) before the pin was released; what the mock reports for a
    # released pin afterwards says nothing about the LED (a released pin floats).
    assert [float(s.state) for s in listen.states][:2] == [0.0, 1.0]


def test_pulse_ramps_the_pwm_status_led(panel: GpioPanel, factory: MockFactory) -> None:
    assert panel.status_is_pwm
    status = pin(factory, PINS["status"])
    status.clear_states()
    panel.show(LedPattern(status=Pulse(0.2, 0.2)))

    def ramped() -> bool:
        levels = {round(float(s.state), 3) for s in list(status.states)}
        return len({v for v in levels if 0.0 < v < 1.0}) >= 4 and 1.0 in levels

    assert wait_until(ramped), [s.state for s in status.states]
    assert status.frequency is not None  # really driven as PWM


def test_blink_toggles_a_plain_led(panel: GpioPanel, factory: MockFactory) -> None:
    listen = pin(factory, PINS["listen"])
    listen.clear_states()
    panel.show(LedPattern(listen=Blink(0.02, 0.02)))

    def toggled() -> bool:
        values = [bool(s.state) for s in list(listen.states)]
        changes = sum(1 for a, b in itertools.pairwise(values) if a != b)
        return changes >= 4

    assert wait_until(toggled)
    panel.show(LedPattern(listen=OFF))
    assert float(listen.state) == 0.0


def test_every_state_pattern_is_applied(panel: GpioPanel, factory: MockFactory) -> None:
    for state in AgentState:
        pattern = pattern_for(state)
        before = {name: len(pin(factory, p).states) for name, p in PINS.items()}
        panel.show(pattern)
        for name in PINS:
            mode = getattr(pattern, name)
            value = float(pin(factory, PINS[name]).state)
            if mode == ON:
                assert value == 1.0, (state, name)
            elif mode == OFF:
                assert value == 0.0, (state, name)
            else:  # blink or pulse: the pin keeps changing in the background
                p, n = pin(factory, PINS[name]), before[name]
                assert wait_until(lambda p=p, n=n: len(p.states) > n), (state, name)


def test_no_pwm_pin_degrades_pulse_to_blink(rec: Recorder) -> None:
    plain = MockFactory(pin_class=MockPin)
    try:
        p = GpioPanel(CFG, rec, plain)
        p.open()
        try:
            assert not p.status_is_pwm
            status = plain.pin(PINS["status"])
            status.clear_states()
            p.show(LedPattern(status=Pulse(0.02, 0.02)))
            assert wait_until(lambda: len({bool(s.state) for s in status.states}) == 2)
            assert all(float(s.state) in (0.0, 1.0) for s in status.states)
        finally:
            p.close()
    finally:
        plain.reset()
        plain.close()


def test_close_turns_everything_off_and_releases_the_pins(
    factory: MockFactory, rec: Recorder
) -> None:
    p = GpioPanel(CFG, rec, factory)
    p.open()
    p.show(LedPattern(status=Pulse(0.1, 0.1), listen=Blink(0.02, 0.02), mute=ON))
    assert wait_until(lambda: len(pin(factory, PINS["listen"]).states) >= 3)
    p.close()
    assert led_states(factory) == {"status": 0.0, "listen": 0.0, "mute": 0.0}
    time.sleep(0.2)  # a blink thread left running would flip a pin again
    assert led_states(factory) == {"status": 0.0, "listen": 0.0, "mute": 0.0}
    pin(factory, "GPIO17").drive_low()
    assert rec.presses == 0
    p.show(LedPattern(mute=ON))  # after close: ignored, no error
    p.close()  # twice is fine
    again = LED(PINS["mute"], pin_factory=factory)  # the pin was released
    again.close()


def test_empty_pin_names_mean_no_such_device(factory: MockFactory, rec: Recorder) -> None:
    cfg = replace(CFG, listen_led_pin="", mute_led_pin="", button_pin="")
    p = GpioPanel(cfg, rec, factory)
    p.open()
    try:
        p.show(LedPattern(status=ON, listen=ON, mute=ON))
        assert float(pin(factory, PINS["status"]).state) == 1.0
        assert float(pin(factory, PINS["listen"]).state) == 0.0  # never claimed
    finally:
        p.close()


# ------------------------------------------------------------------ fallback


def test_disabled_in_config_gives_a_null_panel(factory: MockFactory, rec: Recorder) -> None:
    p = open_panel(replace(CFG, enabled=False), rec, pin_factory=factory)
    assert isinstance(p, NullPanel) and not p.is_hardware
    p.show(pattern_for(AgentState.MUTED))
    assert p.pattern == pattern_for(AgentState.MUTED)
    p.close()
    assert factory.pins == {}  # no pin was touched


@pytest.fixture
def default_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Let gpiozero pick its default pin factory; restore the global afterwards."""
    saved = Device.pin_factory
    monkeypatch.setattr(Device, "pin_factory", None)
    yield
    if isinstance(Device.pin_factory, MockFactory):
        Device.pin_factory.reset()
    if Device.pin_factory is not None:
        Device.pin_factory.close()
    Device.pin_factory = saved


@pytest.mark.usefixtures("default_factory")
def test_no_gpio_on_this_machine_falls_back_and_says_why(
    monkeypatch: pytest.MonkeyPatch, rec: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    model = Path("/proc/device-tree/model")
    if model.exists() and "Raspberry Pi" in model.read_text(errors="replace"):
        pytest.skip("this machine has real GPIO")
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    with caplog.at_level(logging.INFO, logger="edge_agent.device.gpio"):
        p = open_panel(CFG, rec)
    assert isinstance(p, NullPanel)
    assert "BadPinFactory" in p.reason
    warnings_logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_logged) == 1  # one line, with the reasons gpiozero gave
    assert "Falling back from" in warnings_logged[0].getMessage()


@pytest.mark.usefixtures("default_factory")
def test_unknown_pin_factory_falls_back(monkeypatch: pytest.MonkeyPatch, rec: Recorder) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "no_such_factory")
    p = open_panel(CFG, rec)
    assert isinstance(p, NullPanel) and "no_such_factory" in p.reason


@pytest.mark.usefixtures("default_factory")
def test_env_selected_mock_factory_is_used(monkeypatch: pytest.MonkeyPatch, rec: Recorder) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setenv("GPIOZERO_MOCK_PIN_CLASS", "mockpwmpin")
    p = open_panel(CFG, rec)
    try:
        assert isinstance(p, GpioPanel) and p.status_is_pwm
        Device.pin_factory.pin("GPIO17").drive_low()
        assert rec.presses == 1
    finally:
        p.close()


def test_pin_in_use_falls_back_and_releases_what_it_claimed(
    factory: MockFactory, rec: Recorder
) -> None:
    squatter = LED("GPIO24", pin_factory=factory)  # the mute LED's pin
    try:
        p = open_panel(CFG, rec, pin_factory=factory)
        assert isinstance(p, NullPanel) and "GPIO24" in p.reason
        # The status and listen LEDs it had already claimed were given back.
        for name in ("GPIO18", "GPIO23"):
            LED(name, pin_factory=factory).close()
    finally:
        squatter.close()


def test_open_panel_on_the_mock_is_a_real_panel(factory: MockFactory, rec: Recorder) -> None:
    p = open_panel(CFG, rec, pin_factory=factory)
    try:
        assert isinstance(p, GpioPanel) and p.is_hardware
        p.show(LedPattern(status=On()))
        assert float(pin(factory, PINS["status"]).state) == 1.0
    finally:
        p.close()


def test_simulated_press_and_hold_drive_the_mock_pin(panel: GpioPanel, rec: Recorder) -> None:
    """The control socket's virtual button goes through gpiozero's real edge/hold path."""
    panel.simulate("press")
    assert rec.pressed.wait(5)
    assert (rec.presses, rec.holds) == (1, 0)
    time.sleep(CFG.button_bounce_ms / 1000 * 2)  # a person lets go longer than the debounce
    panel.simulate("hold")
    assert rec.held.wait(5)
    assert rec.presses == 2 and rec.holds == 1


def test_describe_reports_each_led_mode(panel: GpioPanel) -> None:
    panel.show(LedPattern(status=Pulse(0.5, 0.5), listen=ON, mute=OFF))
    assert panel.describe() == {"status": "pulse 0.5/0.5s", "listen": "on", "mute": "off"}
