"""Hosted or local: what a visitor may name, read and spend (docs/hosting.md).

The app runs *hosted* when Hugging Face Spaces' SPACE_ID is set, when COMMERGE_HOSTED=1, or when it listens on
anything but the loopback address (unless the owner says the network is trusted: --trust-network or
COMMERGE_TRUST_NETWORK=1). Hosted, a visitor's inputs can be only Hub ids, files they upload and the shipped
demos; Hub calls for their ids never carry the owner's token; every size has a bound that fits a free CPU
Space; messages never show a server path. Local use (the app on 127.0.0.1, the CLI, the library) reads local
folders and files as before, under the generous local bounds.

Nothing here needs Gradio: the page passes its upload folder in as an allowed root.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .archives import ArchiveLimits
from .errors import InputError
from .samples import MAX_SAMPLE_FILE_BYTES

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
FREE_SPACE = "a free CPU Space: 2 vCPU, 16 GB"


def is_loopback(server_name: str | None) -> bool:
    return server_name is None or server_name in LOOPBACK or server_name.startswith("127.")


def hosted_from(server_name: str | None, trust_network: bool = False,
                environ: Mapping[str, str] = os.environ) -> bool:
    """Whether an app that listens on `server_name` must run hosted (see the module's docstring)."""
    if environ.get("SPACE_ID") or environ.get("COMMERGE_HOSTED", "").strip() in ("1", "true", "yes"):
        return True
    trusted = trust_network or environ.get("COMMERGE_TRUST_NETWORK", "").strip() in ("1", "true", "yes")
    return not is_loopback(server_name) and not trusted


class Limits(BaseModel):
    """Upper bounds on one run and on the disk a session and the app may fill."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    profile: str
    experts: int = Field(ge=1)
    calibration_samples: int = Field(ge=1)
    evaluation_samples: int = Field(ge=1, description="per task; 'all' counts as the file's size")
    heldout_samples: int = Field(ge=1)
    max_length: int = Field(ge=2)
    batch_size: int = Field(ge=1)
    merge_batch: int = Field(ge=1)
    merge_memory_gb: float = Field(gt=0)
    model_parameters: int | None = Field(None, ge=1, description="per model; None: no bound")
    sample_file_mb: int = Field(ge=1)
    bundle_entries: int = Field(ge=1)
    bundle_mb: int = Field(ge=1)
    session_disk_gb: float = Field(gt=0)
    app_disk_gb: float = Field(gt=0)
    session_ttl_s: float = Field(gt=0, description="an idle session's files are removed after this")
    run_seconds: float = Field(gt=0, description="a run still going after this long is cancelled")

    def archive(self) -> ArchiveLimits:
        return ArchiveLimits(self.bundle_entries, self.bundle_mb * 2**20, self.sample_file_mb * 2**20)


# A free CPU Space (2 vCPU, 16 GB of memory, 50 GB of disk): a 0.5 B-parameter model with a few experts fits
# in memory in float32; a run of the text demo's size takes minutes, not hours.
HOSTED_LIMITS = Limits(profile="hosted", experts=8, calibration_samples=256, evaluation_samples=1000,
                       heldout_samples=256, max_length=256, batch_size=64, merge_batch=256, merge_memory_gb=4.0,
                       model_parameters=600_000_000, sample_file_mb=32, bundle_entries=5_000, bundle_mb=256,
                       session_disk_gb=4.0, app_disk_gb=20.0, session_ttl_s=3600,
                       run_seconds=1800)
LOCAL_LIMITS = Limits(profile="local", experts=64, calibration_samples=1_000_000, evaluation_samples=10_000_000,
                      heldout_samples=1_000_000, max_length=131_072, batch_size=65_536, merge_batch=1_000_000,
                      merge_memory_gb=4096.0, model_parameters=None, sample_file_mb=200, bundle_entries=200_000,
                      bundle_mb=8192, session_disk_gb=1024.0, app_disk_gb=4096.0, session_ttl_s=24 * 3600,
                      run_seconds=7 * 24 * 3600)


def limit_problems(config, limits: Limits) -> list[str]:
    """Every value of a MergeConfig above its bound, in words (empty when all fit)."""
    o = config.options
    checks = [("experts", len(config.experts), limits.experts),
              ("calibration_samples", o.calibration_samples, limits.calibration_samples),
              ("evaluation_samples", o.evaluation_samples, limits.evaluation_samples),
              ("heldout_samples", o.heldout_samples or None, limits.heldout_samples),
              ("max_length", o.max_length, limits.max_length),
              ("batch_size", o.batch_size, limits.batch_size),
              ("merge_batch", o.merge_batch or None, limits.merge_batch),
              ("merge_memory_gb", o.merge_memory_gb, limits.merge_memory_gb)]
    return [f"{name} {value:g} is above the {limits.profile} limit of {bound:g}" for name, value, bound in checks
            if value is not None and value > bound]


@dataclass(frozen=True)
class Confinement:
    """Where models and sample files may come from. `None` roots: anywhere (local use)."""

    model_roots: tuple[Path, ...] | None = None
    sample_roots: tuple[Path, ...] | None = None
    sample_bytes: int = MAX_SAMPLE_FILE_BYTES  # the largest sample file read

    @property
    def open(self) -> bool:
        return self.model_roots is None and self.sample_roots is None

    def local_model(self, ref: str) -> bool:
        """Whether `ref` may be read as a local folder (a Hub id never is, when confined)."""
        if self.model_roots is None:
            return True
        path = Path(ref)
        if not path.is_absolute():
            return False
        folded = Path(os.path.normpath(path))  # '..' folded; links kept (the LM demo's base links into a cache)
        return any(folded.is_relative_to(root) for root in self.model_roots)

    def check_model(self, ref: str, who: str) -> None:
        from .sources import is_repo_id

        if self.local_model(ref):
            return
        if is_repo_id(ref.strip()):
            return
        raise InputError(f"{who}: here a model is a Hub id ('org/name') or one of the demo's models; "
                         "server folders cannot be read")

    def check_sample(self, path: str | Path, who: str) -> None:
        if self.sample_roots is None:
            return
        try:
            real = Path(path).resolve()
        except (OSError, RuntimeError, ValueError):
            real = None
        if real is None or not any(real.is_relative_to(root.resolve()) for root in self.sample_roots):
            raise InputError(f"{who}: here samples come from files you upload (or a config bundle's own samples/); "
                             "server files cannot be read")


@dataclass(frozen=True)
class Policy:
    """Local or hosted: the limits, where inputs may come from, which Hub token is used, what messages show."""

    hosted: bool
    limits: Limits
    model_roots: tuple[Path, ...] = ()  # hosted: the demos' model folders
    data_roots: tuple[Path, ...] = ()  # hosted: the demos' sample files
    upload_roots: tuple[Path, ...] = ()  # hosted: where the page's uploads land (Gradio's upload folder)
    hidden: tuple[str, ...] = field(default=())  # server paths that never appear in a message

    @classmethod
    def local(cls) -> "Policy":
        return cls(False, LOCAL_LIMITS)

    @classmethod
    def hosted_with(cls, upload_roots: Iterable[Path] = (), limits: Limits = HOSTED_LIMITS) -> "Policy":
        from .demo import DEMO_DIR, DEMOS

        models = tuple(Path(os.path.normpath(d.models)) for d in DEMOS.values())
        uploads = tuple(Path(r) for r in upload_roots)
        data = (DEMO_DIR / "data",)
        hidden = {str(p) for p in (*models, *uploads, *data, DEMO_DIR, Path(__file__).resolve().parents[1],
                                   Path.home(), Path.cwd(), Path(tempfile.gettempdir()))}
        hidden = {h for h in hidden if len(Path(h).parts) > 1}  # never "/" itself
        return cls(True, limits, models, data, uploads, tuple(sorted(hidden, key=len, reverse=True)))

    def confinement(self, bundle: Path | None = None) -> Confinement:
        """Where a run's inputs may come from. The page's run: the visitor's uploads and the demos. A config
        upload's run (`bundle`: its folder): the bundle's own files and the demos, never the upload folder
        that holds other visitors' files."""
        if not self.hosted:
            return Confinement()
        if bundle is None:
            models, samples = self.model_roots, (*self.upload_roots, *self.data_roots)
        else:
            models, samples = (*self.model_roots, bundle.resolve()), (*self.data_roots, bundle.resolve())
        return Confinement(model_roots=models, sample_roots=samples, sample_bytes=self.limits.sample_file_mb * 2**20)

    def hub_token(self, visitor_token: str | None = None) -> str | bool | None:
        """The token for Hub calls made for a visitor: theirs, or anonymous (False) hosted; the process's own
        (None: huggingface_hub's HF_TOKEN or login) locally."""
        if visitor_token and visitor_token.strip():
            return visitor_token.strip()
        return False if self.hosted else None

    def public(self, message: str) -> str:
        """The message as a visitor may see it: hosted, with every server path replaced."""
        if not self.hosted:
            return message
        for secret in self.hidden:
            message = message.replace(secret, "<server>")
        return _ABSOLUTE.sub("<server path>", message)


_ABSOLUTE = re.compile(r"(?<![\w.\-/])(?:~|/(?=[\w.\-~]))[^\s'\"`,;()<>]*")
