"""Building our C++ CPU kernels (csrc/*.cpp) into shared libraries, on first use.

`build(source, what, fallback)` compiles one source with the machine's C++ compiler (`$CXX`,
else g++, -O3 -march=native -fopenmp) into `$GOLF_KERNEL_CACHE` (default
~/.cache/golf-recurrence/kernels), keyed by the source, the headers beside it, the flags and
the CPU, under a temporary name then renamed, so concurrent processes never load a
half-written library. No compiler, or a failed build: None, with one warning naming the
kernel, and the caller keeps PyTorch's path. `load` is the build opened with its functions'
signatures; `env_mode` reads a kernel's on/off switch from the environment.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

CSRC = Path(__file__).parent / "csrc"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")


def _cpu_key() -> str:
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def env_mode(var: str, modes: tuple[str, ...]) -> str:
    """A kernel's switch from $`var` (case and spaces ignored; unset or empty: `modes[0]`);
    any other value than `modes` is a one-line error naming the variable."""
    mode = os.environ.get(var, modes[0]).strip().lower() or modes[0]
    if mode not in modes:
        raise ValueError(f"{var}={mode!r}: expected one of {', '.join(modes)}")
    return mode


def cache_dir() -> Path:
    """Where built kernels live: $GOLF_KERNEL_CACHE, else the user's cache folder."""
    env = os.environ.get("GOLF_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "golf-recurrence" / "kernels"


def build(source: Path, what: str, fallback: str) -> Path | None:
    """The shared library built from `source` (building it if this machine has none yet), or
    None, with a warning "golf_core <what>: ...; using PyTorch's <fallback>", where it cannot
    be."""
    named = os.environ.get("CXX")
    cxx = shutil.which(named) if named else shutil.which("g++") or shutil.which("c++")
    if not cxx:
        why = f"CXX={named!r} not found" if named else "no C++ compiler (g++, c++; set CXX)"
        warnings.warn(f"golf_core {what}: {why}; using PyTorch's {fallback}", stacklevel=4)
        return None
    key = hashlib.sha256(source.read_bytes())
    for header in sorted(source.parent.glob("*.h")):
        key.update(header.read_bytes())
    key.update(" ".join((cxx, *FLAGS)).encode() + _cpu_key().encode())
    out = cache_dir() / f"{source.stem}_{key.hexdigest()[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.stem, suffix=".so.tmp", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cxx, *FLAGS, str(source), "-o", tmp], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            warnings.warn(f"golf_core {what}: {cxx} failed on {source.name} ({last});"
                          f" using PyTorch's {fallback}", stacklevel=4)
            return None
        os.replace(tmp, out)
        return out
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(source: Path, what: str, fallback: str,
         argtypes: dict[str, list[type]]) -> ctypes.CDLL | None:
    """`build(source, what, fallback)` loaded, each function in `argtypes` given its argument
    types and an int result (every kernel entry point returns a status); None where no build."""
    path = build(source, what, fallback)
    if path is None:
        return None
    lib = ctypes.CDLL(str(path))
    for name, types in argtypes.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = types, ctypes.c_int
    return lib
