"""The one base class of the errors esjax raises for bad input."""


class EsjaxError(Exception):
    """Bad input from the user (a file, a setting, a model, a task, a run directory) that esjax refuses, with a
    message that names the input and the fix. The CLI prints these in one line and exits 2; any other exception is
    a bug in esjax and keeps its traceback."""


class InputError(EsjaxError, ValueError):
    """Bad input found below the layer that parsed it: a setting that does not fit the data or the devices, a
    malformed command-line value or environment variable, a file whose contents a lower layer refuses."""
