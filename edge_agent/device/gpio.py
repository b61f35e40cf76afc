"""The button and the three LEDs, through gpiozero; a do-nothing panel when there is no GPIO.

Use ``open_panel`` (it never raises)::

    loop = asyncio.get_running_loop()
    panel = open_panel(cfg.gpio, emit=lambda event: loop.call_soon_threadsafe(handle, event))
    panel.show(pattern_for(state))      # from the loop, on each ShowLeds action
    ...
    panel.close()                        # all LEDs off

The panel emits the core's own events (``ButtonPressed``, ``ButtonHeld``,
``ButtonReleased`` from ``edge_agent.core.events``) through one ``emit`` callable.

Threads: gpiozero calls back from its pin-event thread (lgpio's callback thread on a Pi,
the caller's thread with the mock factory) for press and release and from its hold
thread for a hold, never from the event loop. ``emit`` must only hand the event over
(``loop.call_soon_threadsafe``) and return; an exception in it is logged, not raised
into gpiozero's thread.

Press and hold: ``ButtonPressed`` comes at press time, so barge-in reacts at once;
``ButtonHeld`` once when the button has stayed down ``hold_s``; ``ButtonReleased`` when a
counted press ends. A hold is therefore always preceded by its press; the state machine
starts a conversation from idle only on the release of a short press, so a long press
(mute) never opens a session (see ``edge_agent.core.state``).

Debounce: gpiozero's ``bounce_time`` is passed on (lgpio implements it on a Pi; the mock
factory ignores it), and a software debounce on a monotonic clock is applied as well:
a press counts only if the button had been released for at least ``button_bounce_ms``,
so contact chatter on press or release never makes a second press.

No GPIO: ``gpio.enabled = false``, no pin library, not a Pi, a pin in use or no
permission on /dev/gpiochip* all give a ``NullPanel`` with the same API and one log
line saying why. The daemon runs on without button and LEDs.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from edge_agent.config import GpioConfig
from edge_agent.core.events import ButtonEvent, ButtonHeld, ButtonPressed, ButtonReleased
from edge_agent.core.leds import Blink, LedMode, LedPattern, Off, On, Pulse

log = logging.getLogger(__name__)

Callback = Callable[[], None]
Emit = Callable[[ButtonEvent], None]
Clock = Callable[[], float]


class NullPanel:
    """No button, no LEDs: remembers the last pattern (for status output) and nothing else."""

    is_hardware = False

    def __init__(self, reason: str = "", *, unavailable: bool = True) -> None:
        self.reason = reason
        # True: GPIO was wanted but could not be opened (STATUS says so); False: disabled.
        self.unavailable = unavailable
        self.pattern: LedPattern | None = None

    @property
    def problem(self) -> str | None:
        """What STATUS says while the panel is missing against the config's wish."""
        return f"no button or LEDs: {self.reason}" if self.unavailable else None

    def show(self, pattern: LedPattern) -> None:
        self.pattern = pattern

    def close(self) -> None:
        self.pattern = None

    def simulate(self, action: str) -> None:
        """No button to press: the control socket's virtual button does nothing here."""
        log.info("virtual button %s ignored: no GPIO panel (%s)", action, self.reason)

    def describe(self) -> dict[str, str]:
        if self.pattern is None:
            return {}
        return {name: _describe(getattr(self.pattern, name)) for name in LED_NAMES}


class GpioPanel:
    """Button (press, hold) and three LEDs (status on PWM, listen, mute) via gpiozero.

    The constructor only stores its arguments; ``open()`` claims the pins. ``pin_factory``
    is a gpiozero pin factory (``None``: gpiozero's default, from GPIOZERO_PIN_FACTORY or
    the first of lgpio/RPi.GPIO/pigpio/native that loads). ``clock`` is the monotonic
    clock used for the software debounce.
    """

    is_hardware = True

    def __init__(
        self,
        config: GpioConfig,
        emit: Emit,
        pin_factory: Any = None,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self._config = config
        self._emit = emit
        self._down = False  # a counted press whose release has not come yet
        self._pin_factory = pin_factory
        self._clock = clock
        self._bounce_s = config.button_bounce_ms / 1000.0
        self._lock = threading.Lock()  # guards debounce state and the LED modes
        self._released_at: float | None = None
        self._closed = False
        self._button: Any = None
        self._leds: dict[str, Any] = {}  # "status" / "listen" / "mute" -> LED or PWMLED
        self._modes: dict[str, LedMode] = {}
        self.status_is_pwm = False

    # ----------------------------------------------------------------- lifecycle

    def open(self) -> None:
        """Claim the pins; on any failure release what was claimed and raise."""
        from gpiozero import LED, PWMLED, Button
        from gpiozero.exc import PinPWMUnsupported

        cfg = self._config
        pf = self._pin_factory
        try:
            if cfg.status_led_pin:
                try:
                    self._leds["status"] = PWMLED(
                        cfg.status_led_pin, active_high=cfg.led_active_high, pin_factory=pf
                    )
                    self.status_is_pwm = True
                except PinPWMUnsupported:
                    log.info(
                        "GPIO %s has no PWM here: status LED blinks instead of pulsing",
                        cfg.status_led_pin,
                    )
                    self._leds["status"] = LED(
                        cfg.status_led_pin, active_high=cfg.led_active_high, pin_factory=pf
                    )
            for name, pin in (("listen", cfg.listen_led_pin), ("mute", cfg.mute_led_pin)):
                if pin:
                    self._leds[name] = LED(pin, active_high=cfg.led_active_high, pin_factory=pf)
            if cfg.button_pin:
                button = Button(
                    cfg.button_pin,
                    pull_up=cfg.button_pull_up,
                    bounce_time=self._bounce_s or None,
                    hold_time=cfg.hold_s,
                    hold_repeat=False,
                    pin_factory=pf,
                )
                button.when_pressed = self._pressed
                button.when_released = self._released
                button.when_held = self._held
                self._button = button
        except BaseException:
            self._close_devices()
            raise
        for led in self._leds.values():
            led.off()

    def close(self) -> None:
        """All LEDs off, pins released. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._close_devices()

    def _close_devices(self) -> None:
        if self._button is not None:
            # First, so no press arrives while the rest shuts down.
            self._safe(self._button.close, "close the button")
            self._button = None
        for name, led in self._leds.items():
            self._safe(led.off, f"turn off the {name} LED")
            self._safe(led.close, f"close the {name} LED")
        self._leds = {}
        self._modes = {}

    # ---------------------------------------------------------------------- LEDs

    def show(self, pattern: LedPattern) -> None:
        """Apply a pattern. LEDs already in the wanted mode are left alone (no flicker).

        May block for a few milliseconds: gpiozero joins an LED's blink thread when it
        changes mode.
        """
        with self._lock:
            if self._closed:
                return
            for name, mode in (
                ("status", pattern.status),
                ("listen", pattern.listen),
                ("mute", pattern.mute),
            ):
                led = self._leds.get(name)
                if led is None or self._modes.get(name) == mode:
                    continue
                try:
                    self._apply(led, mode, pwm=name == "status" and self.status_is_pwm)
                    self._modes[name] = mode
                except Exception:
                    log.exception("cannot set the %s LED to %s", name, mode)

    @staticmethod
    def _apply(led: Any, mode: LedMode, *, pwm: bool) -> None:
        if isinstance(mode, Off):
            led.off()
        elif isinstance(mode, On):
            led.on()
        elif isinstance(mode, Blink):
            led.blink(on_time=mode.on_s, off_time=mode.off_s, background=True)
        elif isinstance(mode, Pulse):
            if pwm:
                led.pulse(
                    fade_in_time=mode.fade_in_s, fade_out_time=mode.fade_out_s, background=True
                )
            else:
                led.blink(on_time=mode.fade_in_s, off_time=mode.fade_out_s, background=True)

    def describe(self) -> dict[str, str]:
        """The mode each LED is in, for `edge-agent status` and the demo's timeline."""
        with self._lock:
            return {name: _describe(mode) for name, mode in self._modes.items()}

    # -------------------------------------------------------------------- button

    def simulate(self, action: str) -> None:
        """Press ("press") or long-press ("hold") the button from software.

        On gpiozero's mock pins this drives the pin itself, so the whole real path (edge
        detection, hold timer thread, debounce) runs: the demo and the end-to-end tests
        press the button this way through the control socket. On real pins a person's
        finger is needed; the callbacks are called directly instead. Blocks for the hold
        time on a hold: call it from a worker thread.
        """
        button = self._button
        if button is None:
            return
        pin = button.pin
        drive = (
            (pin.drive_low, pin.drive_high)
            if self._config.button_pull_up
            else (pin.drive_high, pin.drive_low)
        )
        if hasattr(pin, "drive_low"):
            drive[0]()
            time.sleep(self._config.hold_s + 0.3 if action == "hold" else 0.05)
            drive[1]()
        elif action == "hold":
            self._send(ButtonPressed())
            self._send(ButtonHeld())
            self._send(ButtonReleased())
        else:
            self._send(ButtonPressed())
            self._send(ButtonReleased())

    def _pressed(self) -> None:
        now = self._clock()
        with self._lock:
            if self._closed:
                return
            chatter = self._released_at is not None and now - self._released_at < self._bounce_s
        if chatter:
            log.debug("button bounce ignored")
            return
        with self._lock:
            self._down = True
        self._send(ButtonPressed())

    def _released(self) -> None:
        with self._lock:
            self._released_at = self._clock()
            counted, self._down = self._down, False
        if counted and not self._closed:  # the release of a bounce is not reported
            self._send(ButtonReleased())

    def _held(self) -> None:
        if not self._closed:
            self._send(ButtonHeld())

    def _send(self, event: ButtonEvent) -> None:
        try:
            self._emit(event)
        except Exception:
            log.exception("button event %s: handler failed", type(event).__name__)

    @staticmethod
    def _safe(fn: Callback, what: str) -> None:
        try:
            fn()
        except Exception as exc:
            log.warning("GPIO: cannot %s: %s", what, exc)


LED_NAMES = ("status", "listen", "mute")


def _describe(mode: LedMode) -> str:
    if isinstance(mode, Blink):
        return f"blink {mode.on_s:g}/{mode.off_s:g}s"
    if isinstance(mode, Pulse):
        return f"pulse {mode.fade_in_s:g}/{mode.fade_out_s:g}s"
    return "on" if isinstance(mode, On) else "off"


def open_panel(
    config: GpioConfig,
    emit: Emit,
    *,
    pin_factory: Any = None,
    clock: Clock = time.monotonic,
) -> GpioPanel | NullPanel:
    """A working GpioPanel, or a NullPanel (logged once) when GPIO is off or unavailable.

    Call at start-up from the main thread: it records gpiozero's PinFactoryFallback
    warnings (``warnings.catch_warnings`` is process-wide) to say in one line why
    each pin library was skipped.
    """
    if not config.enabled:
        log.info("GPIO disabled in the config: no button, no LEDs")
        return NullPanel("disabled in the config", unavailable=False)
    panel = GpioPanel(config, emit, pin_factory, clock=clock)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            panel.open()
        except Exception as exc:
            skipped = _fallback_notes(caught)
            reason = f"{type(exc).__name__}: {exc}"
            log.warning(
                "GPIO unavailable (%s%s); running without button and LEDs",
                reason,
                f"; {skipped}" if skipped else "",
            )
            return NullPanel(reason)
    skipped = _fallback_notes(caught)
    if skipped:
        log.info("GPIO pin library: %s", skipped)
    log.info(
        "GPIO ready: button %s, LEDs status %s listen %s mute %s",
        config.button_pin or "-",
        config.status_led_pin or "-",
        config.listen_led_pin or "-",
        config.mute_led_pin or "-",
    )
    return panel


def _fallback_notes(caught: list[warnings.WarningMessage]) -> str:
    """gpiozero's notes on the pin libraries it skipped (and the native-factory caveat)."""
    try:
        from gpiozero.exc import PinWarning
    except ImportError:
        return ""
    return "; ".join(str(w.message) for w in caught if issubclass(w.category, PinWarning))
