"""The one base class of the errors a user can act on.

Every module raises its own subclass (ConfigError, CatalogError, ImageRejected, IdentityError, ModelError, ...)
with a message meant for the user as it is; the CLI prints such errors as one line and exits with status 2.
"""


class FlenwheelError(Exception):
    """An error whose message tells the user what is wrong and how to fix it."""
