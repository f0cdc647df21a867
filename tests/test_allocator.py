"""glibc's malloc thresholds, pinned by the engine (invgrad.allocator)."""

import ctypes
import platform

import pytest

from invgrad import allocator


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_thresholds_are_set_once_on_glibc(monkeypatch):
    monkeypatch.setattr(allocator, "_done", False)
    calls = []
    real = ctypes.CDLL

    class Spy:
        def __init__(self, name):
            self.libc = real(name)

        def __getattr__(self, attribute):
            function = getattr(self.libc, attribute)
            if attribute != "mallopt":
                return function

            def mallopt(parameter, value):
                calls.append((parameter, value))
                return function(parameter, value)

            mallopt.argtypes = mallopt.restype = None
            return mallopt

    monkeypatch.setattr(allocator.ctypes, "CDLL", Spy)
    assert allocator.retain_freed_memory()
    assert calls == [(allocator.M_MMAP_THRESHOLD, 32 * 2**20), (allocator.M_TRIM_THRESHOLD, 2**30)]
    assert allocator.retain_freed_memory() and len(calls) == 2  # once per process


def test_opt_out_and_platforms_without_mallopt(monkeypatch):
    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setenv("INVGRAD_MALLOC_DEFAULTS", "1")
    assert not allocator.retain_freed_memory()
    monkeypatch.delenv("INVGRAD_MALLOC_DEFAULTS")

    def no_library(_name):
        raise OSError("no C library here")

    monkeypatch.setattr(allocator.ctypes, "CDLL", no_library)
    assert not allocator.retain_freed_memory()
    assert not allocator._done
