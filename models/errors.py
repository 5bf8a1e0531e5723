"""Errors the model core raises with a message meant for the person running the bot."""


class ModelError(Exception):
    """Base class: the message is one or two sentences a user can act on."""


class ModelLoadError(ModelError):
    """The model or adapter file is missing, unreadable or of the wrong kind."""


class TemplateError(ModelError):
    """An unknown template name, or a model that lacks the template's special tokens."""


class WindowError(ModelError):
    """The system prompt and the reply reserve leave no room for a message."""


class HubError(ModelError):
    """A hub look-up or download failed; the message is one sentence for the owner."""


class HubUnreachable(HubError):
    """No connection to the hub at all."""
