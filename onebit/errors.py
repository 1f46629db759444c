"""The one exception type for bad user input."""


class OnebitError(Exception):
    """Bad input from the user (a config key, a file, a shape): the message is one clear sentence.

    The CLI prints the message and exits non-zero instead of showing a traceback.
    """
