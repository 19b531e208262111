"""The project's exceptions: bad input, and a run the user cancelled."""


class InputError(Exception):
    """Bad input from the user: a file, model, tensor or option that is not what was expected.

    The CLI prints it as one line and exits 2; the app shows it next to its cause.
    """


class Cancelled(Exception):
    """The run was cancelled between two layer groups; nothing was written."""


class MergeError(Exception):
    """A merge that could not be completed (NaN/Inf, out of memory); the message says where and what to try."""


class NonFiniteError(MergeError):
    """The calibration statistics hold NaN or Inf; run_merge adds what to try for the dtype the run used."""
