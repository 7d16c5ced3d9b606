"""What a deploy did and where things are on the device: the value ``deploy`` returns and the
device bench (``bench.py``) measures, apart from both so neither imports the other."""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeship.devices.bundle import DeployedArtifact
from edgeship.devices.pi import SyncResult
from edgeship.devices.probe import DeviceInfo


@dataclass
class Deployment:
    """What a deploy did, and where things are on the device."""

    run_id: str
    device: str
    emulated: bool
    remote_dir: str
    artifacts: list[DeployedArtifact]
    requirements: list[str]
    offline: bool
    sync: SyncResult
    verified_files: int
    venv: str  # "installed" | "reused"
    device_info: DeviceInfo
    seconds: dict[str, float]
    results: list[dict[str, Any]] = field(default_factory=list)
    bench_files: list[Path] = field(default_factory=list)
    testset: str | None = None  # the test split's file in the bundle, for on-device accuracy
    notes: list[str] = field(default_factory=list)  # what the user must know (native code shipped)
    # "switched": the device runs the new bundle (and venv); "unchanged": it already held both
    switch: str = "switched"

    @property
    def bundle_dir(self) -> str:
        return posixpath.join(self.remote_dir, "bundle")

    @property
    def python(self) -> str:
        """The venv's interpreter, relative to ``bundle_dir`` (where commands run)."""
        return "../venv/bin/python"

    def summary(self) -> dict[str, Any]:
        """The ``--json`` object (fixed keys, read by scripts)."""
        return {
            "run_id": self.run_id,
            "device": self.device,
            "emulated": self.emulated,
            "remote_dir": self.remote_dir,
            "bundle_dir": self.bundle_dir,
            "artifacts": [asdict(a) for a in self.artifacts],
            "requirements": self.requirements,
            "offline": self.offline,
            "sync": asdict(self.sync),
            "verified_files": self.verified_files,
            "venv": self.venv,
            "switch": self.switch,
            "device_info": {k: v for k, v in asdict(self.device_info).items() if k != "venv_stamp"},
            "seconds": self.seconds,
            "results": self.results,
            "bench_files": [str(p) for p in self.bench_files],
            "notes": self.notes,
        }
