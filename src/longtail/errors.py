"""The one exception type the command line turns into a one-line message and exit code 2."""


class LongtailError(Exception):
    """A problem with the user's input or files: the message says what was wrong and what to do."""
