"""User-facing errors: each says what is wrong, where, and what to do. The CLI prints them without a traceback."""


class LmforgeError(Exception):
    """Base class of every error caused by the user's input (flags, files, models, data)."""


class ArgumentError(LmforgeError):
    """A flag, YAML key or keyword argument is unknown, has an invalid value, or conflicts with another."""

    def __init__(self, flag: str, message: str):
        self.flag = flag
        super().__init__(f'--{flag}: {message}' if flag else message)


class ModelError(LmforgeError):
    """A model could not be found, resolved or loaded."""


class DataError(LmforgeError):
    """A dataset file or row is missing, malformed or unusable."""


class TemplateError(LmforgeError):
    """A chat template cannot render a conversation, or cannot be used to mask it."""
