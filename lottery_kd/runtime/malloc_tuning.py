"""glibc malloc settings that keep XLA:CPU's per-step buffers mapped between steps.

Why: XLA:CPU mallocs a step's temporaries (one block of hundreds of MB) and frees them after it.
glibc serves blocks over 32 MB with fresh mmap'd memory and unmaps them when freed, so on every
step the kernel maps and zeroes the whole working set again on first touch. ResNet-110's CPU
train step spent ~790 ms of its ~2.4 s of CPU time in the kernel doing that, and ResNet-20's 60-90
ms (getrusage around the step). The command-line entry points therefore restart once with
GLIBC_TUNABLES set (the tunables are read at process start):

- glibc.malloc.mmap_max=0 and arena_max=1: every block comes from the main heap. arena_max=1
  because a thread's own arena cannot grow past 64 MB and then falls back to mmap anyway.
- glibc.malloc.trim_threshold=4294967295: freed memory stays in the heap for the next step. The
  cost: the process keeps its peak memory until it exits.
- glibc.malloc.hugetlb=1 (glibc >= 2.35, transparent huge pages on): the heap on 2 MB pages,
  fewer TLB misses.

Measured on the 2-core AVX-512 CPU (masked train step, batch 128): page faults per step 391 -> 0,
kernel time 62 -> 3 ms (ResNet-20) and 787 -> 8 ms (ResNet-110), the step 191 -> 163 ms and
1002 -> 843 ms. Only memory placement changes: results are bit for bit the same.

Only where JAX computes on the CPU. On a GPU host the device buffers never pass through malloc,
and a single arena serialises the host's threads: on an H200 machine (16 cores) ResNet-56's train
step compiled in 37.1 and 39.0 s under the tunables against 9.6 and 11.8 s without, and stepped in
20.3 and 18.5 ms against 12.7 and 14.7 (runs alternated, `python -m benchmarks.gpu_profile
--model resnet56 --batch 128 --norm-impls fused`, docs/benchmarks.md). So the restart is skipped
where JAX_PLATFORMS names an accelerator first, or, with JAX_PLATFORMS unset, where an
accelerator's device node and JAX's plugin for it are both present (`accelerator_present`).

A tunable the user already set in GLIBC_TUNABLES is left as they set it. LOTTERY_KD_MALLOC_TUNING=0
leaves malloc alone.
"""

from __future__ import annotations

import os
import pkgutil
import sys
from pathlib import Path
from typing import Mapping, Optional

OPT_OUT = "LOTTERY_KD_MALLOC_TUNING"
KEEP_MAPPED = ("glibc.malloc.mmap_max=0", "glibc.malloc.arena_max=1",
               "glibc.malloc.trim_threshold=4294967295")
HUGE_PAGES = "glibc.malloc.hugetlb=1"
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# (device-node glob under /dev, prefixes of the top-level modules of JAX's plugin for it)
ACCELERATORS = (("nvidia[0-9]*", ("jax_cuda", "jax_plugins")),
                ("kfd", ("jax_rocm", "jax_plugins")),
                ("accel[0-9]*", ("libtpu",)),
                ("vfio/[0-9]*", ("libtpu",)))


def _glibc_version() -> Optional[tuple[int, int]]:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except (AttributeError, ValueError, OSError):
        return None


def _transparent_huge_pages_usable() -> bool:
    try:
        mode = _THP_MODE.read_text()
    except OSError:
        return False
    return "[always]" in mode or "[madvise]" in mode


def tunables() -> tuple[str, ...]:
    """The tunables this system takes: none off Linux/glibc, KEEP_MAPPED from glibc 2.26 (the
    first with GLIBC_TUNABLES), plus HUGE_PAGES from glibc 2.35 where huge pages are on."""
    version = _glibc_version()
    if not sys.platform.startswith("linux") or version is None or version < (2, 26):
        return ()
    huge = version >= (2, 35) and _transparent_huge_pages_usable()
    return KEEP_MAPPED + ((HUGE_PAGES,) if huge else ())


def _names(setting: str) -> list[str]:
    return [t.split("=")[0] for t in setting.split(":") if t]


def active(environ: Mapping[str, str] = os.environ) -> str:
    """The malloc tunables this process was started with ("" for none)."""
    return ":".join(t for t in environ.get("GLIBC_TUNABLES", "").split(":")
                    if t.startswith("glibc.malloc."))


def with_tunables(environ: Mapping[str, str],
                  wanted: tuple[str, ...] = KEEP_MAPPED + (HUGE_PAGES,)) -> dict[str, str]:
    """A copy of `environ` whose GLIBC_TUNABLES also holds `wanted`, except the tunables it
    names already (the user's choice stands)."""
    present = environ.get("GLIBC_TUNABLES", "")
    added = [t for t in wanted if t.split("=")[0] not in _names(present)]
    return {**environ, "GLIBC_TUNABLES": ":".join([t for t in present.split(":") if t] + added)}


def accelerator_present(environ: Mapping[str, str] = os.environ, dev: Path = Path("/dev"),
                        modules: Optional[set[str]] = None) -> bool:
    """Whether JAX will compute on an accelerator here, told before JAX is imported: the first
    platform of JAX_PLATFORMS when set, else an accelerator's device node under `dev` together
    with a top-level module of JAX's plugin for it (`modules`: the importable ones, found by
    pkgutil when None)."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() != "cpu"
    present = [prefixes for pattern, prefixes in ACCELERATORS if any(dev.glob(pattern))]
    if not present:
        return False
    if modules is None:
        modules = {module.name for module in pkgutil.iter_modules()}
    return any(name.startswith(prefixes) for prefixes in present for name in modules)


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a restart would add anything: tunables apply here, not opted out, not all set
    already, and JAX computes on the CPU (accelerator_present)."""
    settings = tunables()
    return (bool(settings) and environ.get(OPT_OUT, "1") != "0"
            and with_tunables(environ, settings) != dict(environ)
            and not accelerator_present(environ))


def reexec_with_malloc_tuning() -> None:
    """Replace this process by the same command with the tunables set, where `wanted()`; call it
    first thing in a command-line entry point (nothing before it survives). A failed exec
    leaves the process running as it was."""
    if not wanted():
        return
    environ = with_tunables(os.environ, tunables())
    environ[OPT_OUT] = "0"  # never twice, even if a tunable is not honoured
    try:
        os.execve(sys.executable, list(sys.orig_argv), environ)
    except OSError:
        return
