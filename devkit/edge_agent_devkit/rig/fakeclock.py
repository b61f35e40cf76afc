"""A wall clock that a test can step, for one process: libfaketime with a sleep fix.

NTP steps CLOCK_REALTIME and leaves CLOCK_MONOTONIC alone. libfaketime (Debian package
``faketime``) does the same to one process: with ``FAKETIME_TIMESTAMP_FILE``,
``FAKETIME_NO_CACHE=1`` and ``FAKETIME_DONT_FAKE_MONOTONIC=1``, every wall-clock read
(``time.time()``, TLS validity checks, log timestamps) is the real time plus the offset
written in a file ("-50h", "+0h"), re-read at every call, so rewriting the file is a step.
File timestamps stay the kernel's (``NO_FAKE_STAT``), as they do when NTP steps.

Two faults of libfaketime 0.9.10 (Debian 12, Raspberry Pi OS Bookworm), measured here:

- The plain build returned the real time to about 0.3 % of reads from concurrent threads
  while the offset is re-read at every call: the MT build (serialized calls) is used.
- With the monotonic clock left alone it still rewrites an absolute CLOCK_MONOTONIC
  deadline given to ``clock_nanosleep`` into a negative one, which fails with EINVAL
  (wolfcw/libfaketime#426, fixed in 0.9.11). Python 3.11's ``time.sleep()`` sleeps that
  way, and so does ``subprocess.run(timeout=...)`` in the daemon. A few lines of C,
  compiled with the system's gcc and preloaded before libfaketime, send those sleeps
  straight to the kernel and pass every other one on to libfaketime.
"""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

LIBRARY = "faketime/libfaketimeMT.so.1"

SLEEP_FIX_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int clock_nanosleep(clockid_t clock, int flags, const struct timespec *req,
                    struct timespec *rem) {
    static int (*next)(clockid_t, int, const struct timespec *, struct timespec *);
    if (clock == CLOCK_MONOTONIC) /* never faked here: the kernel's own deadline */
        return syscall(SYS_clock_nanosleep, clock, flags, req, rem) == -1 ? errno : 0;
    if (next == NULL)
        next = dlsym(RTLD_NEXT, "clock_nanosleep");
    return next(clock, flags, req, rem);
}
"""


def libfaketime_path() -> Path | None:
    """libfaketimeMT.so.1 of Debian's `faketime` package (any architecture), or None."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    candidates = [Path("/usr/lib") / multiarch / LIBRARY] if multiarch else []
    candidates += sorted(Path("/usr/lib").glob(f"*/{LIBRARY}"))
    candidates.append(Path("/usr/local/lib") / LIBRARY)
    return next((p for p in candidates if p.is_file()), None)


def available() -> bool:
    """Whether a fake wall clock can be set up here (libfaketime and gcc installed)."""
    return libfaketime_path() is not None and shutil.which("gcc") is not None


def build_sleep_fix(workdir: Path) -> Path:
    """Compile the clock_nanosleep fix into ``workdir``; returns the shared library."""
    source = workdir / "faketime_sleep_fix.c"
    library = workdir / "faketime_sleep_fix.so"
    source.write_text(SLEEP_FIX_C)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return library


def remove_shared_memory(pid: int, shm_dir: Path = Path("/dev/shm")) -> None:
    """Remove what libfaketime shares with the children of process ``pid``.

    Each process that loads it creates ``faketime_shm_PID`` and ``sem.faketime_sem_PID``
    and removes them in a destructor at exit, which ``os._exit`` (the daemon's way out)
    skips: call this once ``pid`` has ended.
    """
    for name in (f"faketime_shm_{pid}", f"sem.faketime_sem_{pid}"):
        (shm_dir / name).unlink(missing_ok=True)


def fake_clock_env(offset_file: Path, workdir: Path) -> dict[str, str]:
    """The environment that runs a process with the stepped wall clock of ``offset_file``."""
    library = libfaketime_path()
    if library is None:
        raise RuntimeError("libfaketime is not installed (Debian package faketime)")
    if not offset_file.exists():
        offset_file.write_text("+0\n")
    return {
        "LD_PRELOAD": f"{build_sleep_fix(workdir)} {library}",
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "NO_FAKE_STAT": "1",
    }
