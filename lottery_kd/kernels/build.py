"""Build, cache and register the native CPU kernels (C++ behind the XLA FFI) on first use.

Each kernel source (conv3x3_cpu.cc, batch_norm_cpu.cc, sparse_conv_cpu.cc, all including
cpu_common.h; sparse_conv_cpu.cc includes conv3x3_cpu.cc and its sparse_*.h parts too) is
compiled with the system C++ compiler (`$CXX`, else c++/g++/clang++) for this CPU
(-march=native, or `$LOTTERY_KD_MARCH`, e.g. x86-64-v3 for an AVX2-only build) and cached under
`$LOTTERY_KD_CACHE` (default ~/.cache/lottery_kd), keyed by every source in this folder,
compiler, flags, jax version and CPU flags. Without a compiler the package still works: the "auto"
settings fall back to XLA, and only an explicit request for a native kernel fails, saying why.
LOTTERY_KD_NATIVE_CONV=0 turns every native kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax

KERNEL_DIR = Path(__file__).parent
_log = logging.getLogger(__name__)


class NativeKernelError(RuntimeError):
    """A native kernel was asked for explicitly but cannot be built or loaded."""


def cpu_signature(cxx: str | None = None) -> str:
    """What -march=native depends on, so a shared cache never hands one CPU another's binary:
    the CPU's flags line, or where /proc/cpuinfo cannot be read, the target macros the compiler
    defines for -march=native here (__AVX512F__ and the like; "x86_64" alone would let an AVX2
    machine load an AVX-512 build)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    if cxx:
        try:
            macros = subprocess.run([cxx, "-march=native", "-dM", "-E", "-x", "c++", os.devnull],
                                    capture_output=True, text=True, timeout=60).stdout
            return "\n".join(sorted(macros.splitlines()))
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def compiler_version(cxx: str) -> str:
    """The compiler's first --version line: a toolchain upgrade builds the kernels again."""
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True,
                              timeout=60).stdout.split("\n", 1)[0]
    except (OSError, subprocess.SubprocessError):
        return ""


def jaxlib_version() -> str:
    """jaxlib's version: the FFI headers the kernels compile against come with it."""
    try:
        import jaxlib
        return str(getattr(jaxlib, "__version__", ""))
    except ImportError:
        return ""


def compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _cache_dir() -> Path:
    root = os.environ.get("LOTTERY_KD_CACHE") or Path.home() / ".cache" / "lottery_kd"
    return Path(root) / "kernels"


def _included_sources() -> list[str]:
    """Every header and source here, in name order: a kernel may include any of them."""
    return [path.read_text() for path in sorted(KERNEL_DIR.glob("*.[ch]*"))
            if path.suffix in (".h", ".cc")]


def build(source: Path) -> Path:
    """Compile `source` (once per sources, compiler, jaxlib and CPU); returns the .so path."""
    cxx = compiler()
    if cxx is None:
        raise NativeKernelError("no C++ compiler found (set $CXX or install g++)")
    march = os.environ.get("LOTTERY_KD_MARCH") or "native"
    flags = ["-O3", f"-march={march}", "-std=c++17", "-shared", "-fPIC", "-w",
             f"-I{jax.ffi.include_dir()}", f"-I{KERNEL_DIR}"]
    key = hashlib.sha256("\n".join([
        source.read_text(), *_included_sources(), cxx, compiler_version(cxx), " ".join(flags),
        jax.__version__, jaxlib_version(), cpu_signature(cxx),
    ]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"{source.stem}_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build into a temporary file and rename, so concurrent processes never load half a file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cxx, *flags, str(source), "-o", tmp, "-lpthread"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise NativeKernelError(f"compiling {source.name} failed:\n{proc.stderr[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def load(source_name: str, targets: tuple[tuple[str, str], ...]) -> tuple[bool, str]:
    """Build `source_name` (in this folder), load it and register its FFI handlers, once per
    process: `targets` pairs (FFI target name, exported symbol). Returns (ok, reason if not)."""
    if os.environ.get("LOTTERY_KD_NATIVE_CONV", "1") == "0":
        return False, "disabled by LOTTERY_KD_NATIVE_CONV=0"
    try:
        library = ctypes.cdll.LoadLibrary(str(build(KERNEL_DIR / source_name)))
        for name, symbol in targets:
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)),
                                        platform="cpu")
    except (NativeKernelError, OSError, AttributeError, subprocess.SubprocessError) as error:
        _log.warning("native kernel %s unavailable, using XLA: %s", source_name, error)
        return False, str(error)
    return True, ""


def single_cpu_device() -> bool:
    """Where the native kernels may run: one CPU device (they are opaque custom calls, which
    XLA's SPMD partitioner would gather onto every device of a sharded batch)."""
    return jax.default_backend() == "cpu" and jax.device_count() == 1
