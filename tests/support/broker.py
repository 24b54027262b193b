"""Start the Tansu broker for tests (the same `EmbeddedBroker` the CLI and demo use)."""
from __future__ import annotations

from pathlib import Path

from stream.tools.embedded import EmbeddedBroker


def start_tansu(workdir: str | Path) -> EmbeddedBroker:
    """Start Tansu on a free loopback port, logging to `workdir/tansu.log`; caller must `.stop()` it."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return EmbeddedBroker(log_path=workdir / "tansu.log").start()
