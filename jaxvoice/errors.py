"""The one exception type that the command line turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a missing or corrupt file, an unknown key, impossible sizes.

    The message names the problem and the fix in one line; the CLI prints it without a traceback.
    """
