"""Errors the engine raises for bad artifacts and bad input."""


class ArtifactError(ValueError):
    """A model or feature file is malformed, tampered with, or of an unknown format."""


class InputError(ValueError):
    """Input data breaks a contract; the message names the file, row and column."""


class SourceUnavailable(InputError):
    """The input could not be listed or read (gone, unreachable); the cause says whether trying again may help."""
