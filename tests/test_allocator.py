"""models.allocator: glibc keeps a forward pass's freed memory instead of returning it to the kernel."""
import platform
import resource

import pytest
import torch

from models import allocator

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")


def _page_faults() -> int:
    """Minor page faults of a forward-pass-like pattern: several MB-sized arrays alive at once, then all freed."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        held = [torch.ones(3 << 18) for _ in range(6)]  # 6 x 3 MB
        del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_arrays_are_reused_without_page_faults():
    if not allocator.keep_freed_memory():
        pytest.skip("the environment sets malloc parameters itself")
    _page_faults()  # the heap grows to the pattern's size once
    # glibc's defaults trim the freed 18 MB every round: ~46,000 faults (6 x 768 pages x 10 rounds)
    assert _page_faults() < 1000


def test_the_environments_malloc_settings_win(monkeypatch):
    for name in allocator.ENV_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    assert allocator._apply() is False


def test_the_cpu_engine_applies_them(monkeypatch):
    from models.engine import ClmtTranslator
    for name in allocator.ENV_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(allocator, "_applied", None)
    ClmtTranslator(device="cpu")
    assert allocator._applied is True


def test_glibc_tunables_win_only_when_they_set_malloc(monkeypatch):
    for name in allocator.ENV_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576")
    assert allocator._apply() is False
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.rtld.optional_static_tls=2048")
    assert allocator._apply() is True
