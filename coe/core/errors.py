"""What a user can fix, as opposed to a bug in coe.

The command line reports a `UserError` in one line and exits 2; anything else is an internal
error, shown with its traceback (and a ValueError from deep inside a library is not a user's
mistake just because of its type). Each layer raises its own subclass, named for what went wrong."""


class UserError(Exception):
    """Bad configuration, a missing or malformed input, models that are not there yet."""
