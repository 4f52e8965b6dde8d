"""The one exception type for bad user input.

Anything raised as ``UserError`` is shown by the CLI as one line on stderr (exit code 2, no
traceback). Library code raises it where the cause is something the user gave us: a path, a
value, a file on disk. Bugs stay ordinary exceptions so they keep their tracebacks.
"""


class UserError(Exception):
    """Bad input from the user: a message that names the bad thing."""
