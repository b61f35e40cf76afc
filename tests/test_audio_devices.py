"""Device listing, name resolution, rate probing and the ALSA rig, over real PortAudio."""

from __future__ import annotations

import itertools
import os
import threading

import numpy as np
import pytest

from edge_agent.audio import devices as dev
from edge_agent_devkit.rig.alsa_rig import AlsaRig, load_pcm

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def rig(tmp_path):
    rig = AlsaRig(tmp_path / "rig")
    yield rig
    rig.stop()


def _info(index: int, name: str, ins: int, outs: int, host: str = "ALSA") -> dev.DeviceInfo:
    return dev.DeviceInfo(index, name, ins, outs, 48000.0, host)


FAKE = [
    _info(0, "USB Audio Device: - (hw:1,0)", 1, 2),
    _info(1, "bcm2835 Headphones: - (hw:0,0)", 0, 8),
    _info(2, "mic", 1, 0),
    _info(3, "mic2", 1, 0),
    _info(4, "default", 32, 32),
]


def test_resolve_prefers_exact_then_case_insensitive_then_unique_substring():
    assert dev.resolve_device(FAKE, "mic", "input").index == 2  # exact beats substring of mic2
    assert dev.resolve_device(FAKE, "MIC2", "input").index == 3
    assert dev.resolve_device(FAKE, "hw:1,0", "input").index == 0
    assert dev.resolve_device(FAKE, "usb audio", "output").index == 0
    assert dev.resolve_device(FAKE, "Headphones", "output").index == 1
    assert dev.resolve_device(FAKE, "default", "output").index == 4


def test_resolve_exact_duplicates_prefer_alsa():
    devices = [_info(0, "default", 2, 2, "JACK Audio Connection Kit"), _info(1, "default", 2, 2)]
    assert dev.resolve_device(devices, "default", "input").index == 1


def test_resolve_not_found_lists_available_devices_of_that_direction():
    with pytest.raises(dev.DeviceNotFoundError) as err:
        dev.resolve_device(FAKE, "Headphones", "input")  # exists, but only as an output
    text = str(err.value)
    assert "no input device matches 'Headphones'" in text
    assert "'USB Audio Device: - (hw:1,0)' (in+out, 48000 Hz)" in text
    assert "'mic2'" in text and "bcm2835" not in text


def test_resolve_ambiguous_lists_the_matches():
    with pytest.raises(dev.AmbiguousDeviceError) as err:
        dev.resolve_device(FAKE, "hw:", "output")
    text = str(err.value)
    assert "2 output devices match 'hw:'" in text
    assert "USB Audio" in text and "bcm2835" in text
    assert isinstance(err.value, dev.AudioDeviceError)


def test_list_devices_shows_rig_devices_with_directions_and_rates(rig):
    rig.add_fifo_capture("mic", 16000)
    rig.add_fifo_playback("spk", 24000)
    rig.add_file_capture("mic48", np.zeros(480, np.int16), only_rate_hz=48000)
    rig.start()
    devices = {d.name: d for d in dev.list_devices()}
    assert {"mic", "spk", "mic48", "default"} <= set(devices)
    assert devices["mic"].is_input and not devices["mic"].is_output
    assert devices["spk"].is_output and not devices["spk"].is_input
    assert devices["mic48"].default_rate_hz == 48000  # PortAudio's pick for a fixed-rate pcm
    assert all(d.host_api == "ALSA" for d in devices.values())
    assert "Hz" in devices["mic"].describe()


def test_real_lookup_error_lists_what_portaudio_sees(rig):
    rig.add_fifo_capture("kitchen_mic", 16000)
    rig.add_fifo_playback("kitchen_speaker", 24000)
    rig.add_fifo_playback("kitchen_hdmi", 48000)
    rig.start()
    devices = dev.list_devices()
    with pytest.raises(dev.DeviceNotFoundError) as err:
        dev.resolve_device(devices, "respeaker", "input")
    assert "'kitchen_mic'" in str(err.value) and "'default'" in str(err.value)
    with pytest.raises(dev.AmbiguousDeviceError) as err:
        dev.resolve_device(devices, "kitchen", "output")
    assert "'kitchen_hdmi'" in str(err.value) and "'kitchen_speaker'" in str(err.value)
    assert "kitchen_mic" not in str(err.value)  # not an output
    assert dev.resolve_device(devices, "kitchen", "input").name == "kitchen_mic"
    assert dev.resolve_device(devices, "speaker", "output").name == "kitchen_speaker"


def test_supported_rates_of_a_48k_only_device(rig):
    rig.add_file_capture("mic48", np.zeros(480, np.int16), only_rate_hz=48000)
    rig.add_file_capture("anyrate", np.zeros(480, np.int16))
    rig.start()
    with dev.portaudio_session() as pa:
        devices = dev.query_devices(pa)
        mic48 = dev.resolve_device(devices, "mic48", "input")
        anyrate = dev.resolve_device(devices, "anyrate", "input")
        rates = (16000, 44100, 48000)
        assert dev.supported_rates(pa, mic48, "input", rates) == [48000]
        assert dev.supported_rates(pa, anyrate, "input", rates) == [16000, 44100, 48000]
        assert dev.pick_format(pa, [mic48], "input", rates) == (48000, 1)
        with pytest.raises(dev.NoSupportedFormatError, match="mic48"):
            dev.pick_format(pa, [mic48], "input", (16000, 44100))
        assert not dev.is_supported(pa, mic48, "input", 48000, channels=999)


def test_quiet_stderr_silences_fd2_and_restores_it(capfd):
    with dev.quiet_stderr():
        os.write(2, b"jack noise\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_unique_rates_keeps_preference_order():
    assert dev.unique_rates(44100, (16000, 44100, 48000)) == (44100, 16000, 48000)


# ---------------------------------------------------------------------------- the rig


def test_rig_config_always_defines_default_and_restores_env(tmp_path):
    before = os.environ.get("ALSA_CONFIG_PATH")
    rig = AlsaRig(tmp_path / "r")
    rig.add_fifo_capture("mic", 16000)
    with rig:
        text = rig.config_path.read_text()
        assert "pcm.!default" in text and "pcm.mic " in text
        assert os.environ["ALSA_CONFIG_PATH"] == str(rig.config_path)
        assert rig.env({})["ALSA_CONFIG_PATH"] == str(rig.config_path)
    assert os.environ.get("ALSA_CONFIG_PATH") == before


def test_rig_stops_cleanly_threads_joined_fifos_removed(tmp_path):
    threads_before = set(threading.enumerate())
    rig = AlsaRig(tmp_path / "r")
    feeder = rig.add_fifo_capture("mic", 16000, source=np.ones(1600, np.int16))
    recorder = rig.add_fifo_playback("spk", 24000)
    duplex = rig.add_duplex("dup", 48000)
    rig.start()
    assert feeder.path.exists() and recorder.path.exists() and duplex.feeder.path.exists()
    # PortAudio opens every capture FIFO while listing devices; the rig must not hang on it,
    # not even with a frozen or vanished feeder.
    feeder.freeze()
    duplex.vanish()
    names = {d.name for d in dev.list_devices()}
    assert "mic" in names and "dup" not in names
    duplex.reappear()
    assert "dup" in {d.name for d in dev.list_devices()}
    rig.stop()
    rig.stop()  # idempotent
    assert not feeder.path.exists() and not recorder.path.exists()
    assert not duplex.feeder.path.exists() and not duplex.recorder.path.parent.exists()
    leftover = [t for t in threading.enumerate() if t not in threads_before]
    assert not [t for t in leftover if t.name.startswith("rig-")]


def test_rig_feeder_pads_with_silence_and_logs_block_times(rig):
    src = (np.arange(800) + 1).astype(np.int16)  # 50 ms
    feeder = rig.add_fifo_capture("mic", 16000, source=src)
    rig.start()
    # Nobody reads: the feeder holds at its backlog limit instead of running ahead.
    assert feeder.wait_fed(320, timeout=5)
    assert feeder.fed_samples <= feeder.max_backlog_bytes // 2
    with open(feeder.path, "rb", buffering=0) as reader:  # a reader drains it
        got = b""
        while len(got) < 1600 * 2:
            got += reader.read(1600 * 2 - len(got))
    samples = np.frombuffer(got, dtype="<i2")
    assert np.array_equal(samples[:800], src)
    assert not samples[800:].any()
    blocks = feeder.fed_blocks()
    assert [b.start_sample for b in blocks[:3]] == [0, 160, 320]
    assert all(b.time <= c.time for b, c in itertools.pairwise(blocks))
    assert feeder.fed_source_samples == 800 and feeder.pending_samples == 0
    assert feeder.time_of_sample(0) == blocks[0].time
    assert feeder.time_of_sample(10**9) is None


def test_load_pcm_reads_wav_and_checks_format(tmp_path):
    import wave

    path = tmp_path / "a.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.arange(10, dtype="<i2").tobytes())
    assert load_pcm(path, 16000) == np.arange(10, dtype="<i2").tobytes()
    with pytest.raises(ValueError, match="16000 Hz, device is 48000 Hz"):
        load_pcm(path, 48000)
    with pytest.raises(ValueError):
        load_pcm(np.zeros(4, np.float32))
    with pytest.raises(ValueError):
        load_pcm(b"\x00\x01\x02")


def test_exact_only_does_not_drift_to_a_longer_name():
    without_mic = [d for d in FAKE if d.name != "mic"]
    assert dev.resolve_device(without_mic, "mic", "input").name == "mic2"  # plain substring
    with pytest.raises(dev.DeviceNotFoundError):
        dev.resolve_device(without_mic, "mic", "input", exact_only=True)
    assert dev.is_exact_match(FAKE[2], " MIC ") and not dev.is_exact_match(FAKE[3], "mic")
