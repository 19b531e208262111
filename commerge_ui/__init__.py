"""commerge_ui: merge fine-tuned experts with Chain of Merges (CoM), RegMean and the usual baselines."""

from importlib.metadata import PackageNotFoundError, version

from .config import MergeConfig, MergeOptions, load_config, parse_config
from .errors import Cancelled, InputError, MergeError

try:
    __version__ = version("commerge_ui")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.1.0"

__all__ = ["__version__", "Cancelled", "InputError", "MergeConfig", "MergeError", "MergeOptions", "load_config", "parse_config",
           "run_merge"]


def __getattr__(name: str):
    if name == "run_merge":  # keeps `import commerge_ui` light for the CLI's argument parsing
        from .api import run_merge
        return run_merge
    raise AttributeError(name)
