"""commerge_ui: merge fine-tuned experts with Chain of Merges (CoM), RegMean and the usual baselines."""

from .config import MergeConfig, MergeOptions, load_config, parse_config
from .errors import Cancelled, InputError, MergeError

__all__ = ["Cancelled", "InputError", "MergeConfig", "MergeError", "MergeOptions", "load_config", "parse_config",
           "run_merge"]


def __getattr__(name: str):
    if name == "run_merge":  # keeps `import commerge_ui` light for the CLI's argument parsing
        from .api import run_merge
        return run_merge
    raise AttributeError(name)
