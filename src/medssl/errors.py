"""The one exception type for bad input: the CLI turns it into a single line and exit code 2."""


class MedsslError(ValueError):
    """Bad input (a file, a column, a value): the message names it and says what is wrong."""


class ImageReadError(MedsslError):
    """An image file that cannot be read: corrupt, truncated, or of an unsupported format."""


class ManifestError(MedsslError):
    """A manifest CSV with missing or misspelled columns, duplicate paths or labels of the wrong type."""


class LeakageError(MedsslError):
    """A patient appears in two splits."""


class PacsError(MedsslError):
    """A PACS that cannot be reached or refuses: `kind` says which, for a service to answer with the right status
    (unreachable, timeout, auth, not_found, no_images, refused)."""

    def __init__(self, message: str, kind: str = "refused"):
        super().__init__(message)
        self.kind = kind
