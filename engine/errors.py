"""User-facing engine errors: every message is safe to show in the console as it is.

Pages catch :class:`EngineError` and show its message; any other exception from the engine is a bug.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine host raises on purpose; ``str(error)`` is safe to show to a user."""


class EmptyPromptError(EngineError):
    """The prompt is empty or only whitespace."""

    def __init__(self, message: str = "The prompt is empty: type a message first.") -> None:
        super().__init__(message)


class PromptTooLongError(EngineError):
    """The prompt does not leave room for a single generated token within the model's context."""

    def __init__(self, prompt_tokens: int, limit: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.limit = limit
        super().__init__(
            f"The prompt is too long: {prompt_tokens} tokens, but the model's context holds {limit} "
            "(prompt and answer together). Shorten the conversation or start a new one."
        )


class EngineNotReadyError(EngineError):
    """The engine is still loading, stopped or failed, so it cannot take requests yet."""


class EngineDeadError(EngineError):
    """The engine failed while serving; in-flight requests are lost and the host must be restarted."""


class NoChatTemplateError(EngineError):
    """The model's tokenizer has no chat template, so chat messages cannot be turned into a prompt."""


class ModelLoadError(EngineError):
    """A model version could not be loaded (bad path, unsupported architecture, not enough memory...)."""


class InvalidSamplingError(EngineError, ValueError):
    """Sampling settings are out of range; the message names the setting and the allowed range."""


class EngineArgsError(ModelLoadError, ValueError):
    """A model version carries vLLM engine arguments the engine does not allow; the message names them and
    lists the allowed ones."""


class ServerUnavailableError(EngineNotReadyError):
    """A vLLM server does not answer, refuses the API key, or does not serve the model it should; the message names
    the server and what went wrong."""


class ServerStartError(ModelLoadError):
    """A managed vLLM server did not come up (its process ended or never answered ``/health``); the message carries
    the tail of its log. ``out_of_memory`` is True when the log says it ran out of memory, so a blue-green switch
    may fall back to stopping the old engine first."""

    def __init__(self, message: str, *, out_of_memory: bool = False) -> None:
        super().__init__(message)
        self.out_of_memory = out_of_memory


class BadServerURL(EngineError, ValueError):
    """A vLLM server's base URL is malformed (not http/https, no host, or carrying credentials, a query or a
    fragment); the message says what to fix."""
