"""The one exception type for errors a user can cause and fix."""


class UserError(Exception):
    """A problem the user can fix; the message names the fix. The CLI prints it in one line."""
