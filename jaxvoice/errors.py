"""The one exception type that the command line turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a missing or corrupt file, an unknown key, impossible sizes.

    The message names the problem and the fix in one line; the CLI prints it without a traceback. Line breaks
    (e.g. in a quoted bad value) are shown escaped, so the message stays one line whatever the input was.
    """

    def __init__(self, message: str):
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))
