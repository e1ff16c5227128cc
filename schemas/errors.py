"""The one exception hierarchy of llmfleet.

Every error an agent can see comes from here, on either side of the queue. Errors
cross the result backend as JSON (never pickle): ``to_payload()`` gives a plain dict
and ``FleetError.from_payload()`` rebuilds the same class with the same fields.

    FleetError
    ├── ConfigError                    the fleet file or the environment is wrong
    ├── JobValidationError             a payload is refused; names the field
    │   ├── UnknownTierError
    │   ├── UnknownModelError
    │   └── RequestTooLargeError
    ├── JobTimeoutError                no result within the caller's timeout
    ├── JobCancelledError              an agent cancelled the job
    ├── FleetUnavailableError          the broker or result backend cannot be reached
    ├── ClientClosedError              the client was closed while a wait was in flight
    ├── ProviderError                  one provider call failed
    │   ├── RetryableProviderError     worth another try of the same model
    │   │   ├── RateLimitError         429 (may carry retry_after)
    │   │   ├── ProviderOverloadedError   529, 503
    │   │   ├── ProviderServerError    other 5xx, 408, 409
    │   │   ├── ProviderTimeoutError
    │   │   └── ProviderConnectionError
    │   ├── ContextLengthError         prompt too long for this model; another may fit
    │   ├── ModelNotFoundError         the provider does not know the model
    │   ├── ProviderAuthError          401/403: a key is missing or wrong
    │   ├── ProviderBadRequestError    other 4xx: the request itself is wrong
    │   ├── OutputValidationError      the answer is not the JSON the job asked for
    │   └── StreamInterruptedError     the provider failed after its stream began
    ├── AllModelsFailedError           every model of the chain failed; carries attempts
    ├── BudgetExceededError            a budget would be overshot; names it, its spend, limit
    ├── RateLimitedError               a rate limit of the fleet refuses the job for now
    ├── WorkerError                    a worker failed in a way none of the above names
    ├── VectorStoreError               the vector store cannot do what was asked
    │   ├── VectorDimensionError       a vector's width is not its collection's
    │   └── PgvectorMissingError       the database lacks the pgvector extension
    ├── TemplateError                  a prompt template cannot be stored or rendered
    │   ├── TemplateNotFoundError      no template (or no such version) by that name
    │   └── TemplateRenderError        syntax error, missing variable or sandbox refusal
    ├── ExperimentError                an experiment is misdefined or cannot do what was asked
    │   ├── ExperimentNotFoundError    no experiment by that name
    │   └── UnknownJobError            feedback for a job the ledger does not hold
    └── AgentRunError                  an agent's tool loop did not reach an answer
        └── MaxStepsExceededError      it took every step it was allowed

Control flow that is not an error (a job moved to another model, say) does not live here.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AgentRunError", "AllModelsFailedError", "BudgetExceededError", "ClientClosedError",
    "ConfigError", "ContextLengthError", "ExperimentError", "ExperimentNotFoundError",
    "FleetError", "FleetUnavailableError", "JobCancelledError", "JobTimeoutError",
    "JobValidationError", "MaxStepsExceededError", "ModelNotFoundError",
    "OutputValidationError", "PgvectorMissingError", "ProviderAuthError",
    "ProviderBadRequestError", "ProviderConnectionError", "ProviderError",
    "ProviderOverloadedError", "ProviderServerError", "ProviderTimeoutError", "RateLimitError",
    "RateLimitedError",
    "RequestTooLargeError", "RetryableProviderError", "StreamInterruptedError",
    "TemplateError", "TemplateNotFoundError", "TemplateRenderError", "UnknownJobError",
    "UnknownModelError", "UnknownTierError", "VectorDimensionError", "VectorStoreError",
    "WorkerError",
]

_REGISTRY: dict[str, type[FleetError]] = {}


class FleetError(Exception):
    """Base of every llmfleet error. ``fields`` holds the JSON-able details."""

    #: Names of the keyword fields a class carries across the result backend (its
    #: own; ``all_fields`` adds its bases').
    field_names: ClassVar[tuple[str, ...]] = ()
    all_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        if unknown := set(fields) - set(self.all_fields):
            raise TypeError(f"{type(self).__name__} takes no field {sorted(unknown)}")
        for name in self.all_fields:
            setattr(self, name, fields.get(name))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls
        cls.all_fields = tuple(dict.fromkeys(
            name for klass in reversed(cls.__mro__) for name in getattr(klass, "field_names", ())))

    def to_payload(self) -> dict[str, Any]:
        """A JSON-able dict; ``from_payload`` turns it back into this error."""
        fields = {name: getattr(self, name) for name in self.all_fields}
        return {"type": type(self).__name__, "message": self.message, "fields": fields}

    @staticmethod
    def from_payload(payload: dict[str, Any]) -> FleetError:
        """Rebuild an error sent as JSON; an unknown type becomes a WorkerError."""
        cls = _REGISTRY.get(str(payload.get("type")))
        message, fields = str(payload.get("message", "")), payload.get("fields") or {}
        if cls is None:
            return WorkerError(f"{payload.get('type')}: {message}")
        return cls(message, **{k: v for k, v in fields.items() if k in cls.all_fields})


_REGISTRY["FleetError"] = FleetError


class ConfigError(FleetError):
    """The fleet file or the environment is wrong; ``key`` names the culprit."""

    field_names: ClassVar[tuple[str, ...]] = ("key",)
    key: str | None


class JobValidationError(FleetError):
    """A job payload was refused; ``field`` names the offending field."""

    field_names: ClassVar[tuple[str, ...]] = ("field",)
    field: str | None


class UnknownTierError(JobValidationError):
    """The job names a tier the fleet file does not define."""


class UnknownModelError(JobValidationError):
    """The job names a model the fleet file does not define."""


class RequestTooLargeError(JobValidationError):
    """The request is over the fleet's size limit or the model's context window."""


class JobTimeoutError(FleetError):
    """No result arrived within the caller's timeout; the job may still finish."""

    field_names: ClassVar[tuple[str, ...]] = ("job_id", "timeout")
    job_id: str | None
    timeout: float | None


class JobCancelledError(FleetError):
    """An agent cancelled the job (``handle.cancel()``, a closed stream): refused before
    it started, or stopped in flight; what it had produced is billed."""

    field_names: ClassVar[tuple[str, ...]] = ("job_id",)
    job_id: str | None


class FleetUnavailableError(FleetError):
    """The broker or the result backend cannot be reached."""


class ClientClosedError(FleetError):
    """The client was closed (``FleetClient.close``) while this wait was in flight, or
    used after it was closed."""


class ProviderError(FleetError):
    """One call to a provider failed; ``retry_after``: seconds the provider asked us to
    wait (its Retry-After header), whatever the status."""

    field_names: ClassVar[tuple[str, ...]] = ("provider", "model", "status_code", "retry_after")
    provider: str | None
    model: str | None
    status_code: int | None
    retry_after: float | None
    #: Worth another try of the same model after a backoff.
    retryable: ClassVar[bool] = False
    #: Another model of the tier's chain may succeed where this one failed.
    fallback: ClassVar[bool] = False


class RetryableProviderError(ProviderError):
    """A transient failure: the same call may succeed later."""

    retryable = True
    fallback = True


class RateLimitError(RetryableProviderError):
    """429: the provider asks us to slow down (for ``retry_after`` seconds, if it said)."""


class ProviderOverloadedError(RetryableProviderError):
    """529 or 503: the provider is overloaded."""


class ProviderServerError(RetryableProviderError):
    """A 5xx (or 408/409) from the provider."""


class ProviderTimeoutError(RetryableProviderError):
    """The provider did not answer within the configured timeouts."""


class ProviderConnectionError(RetryableProviderError):
    """The provider could not be reached."""


class ContextLengthError(ProviderError):
    """The prompt is too long for this model; a model with a larger window may take it."""

    fallback = True


class ModelNotFoundError(ProviderError):
    """The provider does not serve this model."""

    fallback = True


class ProviderAuthError(ProviderError):
    """401/403: the provider's key is missing or wrong."""

    fallback = True


class ProviderBadRequestError(ProviderError):
    """Another 4xx: the request itself is wrong, so no retry and no fallback."""


class OutputValidationError(ProviderError):
    """The model's answer is not what the job asked for (JSON of its schema, a call of a
    tool it offered), even after asking again; ``detail`` quotes the validator."""

    field_names: ClassVar[tuple[str, ...]] = ("detail",)
    detail: str | None
    fallback = True


class StreamInterruptedError(ProviderError):
    """The provider failed after its stream began: what it wrote went out already, so
    neither a retry nor another model can take over; what it wrote is billed."""


class AllModelsFailedError(FleetError):
    """Every model of the chain failed; ``attempts`` lists each try."""

    field_names: ClassVar[tuple[str, ...]] = ("tier", "attempts")
    tier: str | None
    attempts: list[dict[str, Any]] | None


class BudgetExceededError(FleetError):
    """The job's worst-case cost would take a budget past its limit."""

    field_names: ClassVar[tuple[str, ...]] = ("budget", "spent_usd", "limit_usd", "period")
    budget: str | None
    spent_usd: float | None
    limit_usd: float | None
    period: str | None


class RateLimitedError(FleetError):
    """A limit of the fleet (``[[limits]]``, a fleet key's own) refuses the job now:
    ``limit`` names it, ``kind`` is requests, tokens or concurrency, ``retry_after`` the
    seconds until the job would fit, ``limit_value`` and ``remaining`` the limit's size
    and what is left of it."""

    field_names: ClassVar[tuple[str, ...]] = ("limit", "kind", "retry_after", "limit_value",
                                              "remaining")
    limit: str | None
    kind: str | None
    retry_after: float | None
    limit_value: int | None
    remaining: int | None


class WorkerError(FleetError):
    """A worker failed in a way no other class names."""


class VectorStoreError(FleetError):
    """The vector store cannot do what was asked; ``collection`` names where."""

    field_names: ClassVar[tuple[str, ...]] = ("collection",)
    collection: str | None


class VectorDimensionError(VectorStoreError):
    """A vector's width differs from its collection's (``expected``, ``got``)."""

    field_names: ClassVar[tuple[str, ...]] = ("expected", "got")
    expected: int | None
    got: int | None


class PgvectorMissingError(VectorStoreError):
    """The database has no pgvector extension and we may not create it: the fleet runs
    without it, only the vector store refuses."""


class TemplateError(FleetError):
    """A prompt template cannot be stored or rendered; names it, its version and the
    variable at fault when there is one."""

    field_names: ClassVar[tuple[str, ...]] = ("template", "version", "variable")
    template: str | None
    version: int | None
    variable: str | None


class TemplateNotFoundError(TemplateError):
    """No template by that name, or not at that version."""


class TemplateRenderError(TemplateError):
    """The template does not parse, lacks a variable, or reached for what the sandbox
    refuses (Python internals, unbounded ranges)."""


class ExperimentError(FleetError):
    """An experiment is misdefined, or not in a state to do what was asked."""

    field_names: ClassVar[tuple[str, ...]] = ("experiment", "job_id")
    experiment: str | None
    job_id: str | None


class ExperimentNotFoundError(ExperimentError):
    """No experiment by that name."""


class UnknownJobError(ExperimentError):
    """Feedback names a job the ledger does not hold, or one outside any experiment."""


class AgentRunError(FleetError):
    """An agent's tool loop (``FleetAgent.run``) ended without an answer; ``steps`` it
    took and what they cost."""

    field_names: ClassVar[tuple[str, ...]] = ("steps", "cost_usd")
    steps: int | None
    cost_usd: float | None


class MaxStepsExceededError(AgentRunError):
    """The tool loop took every step it was allowed and the model still asked for tools."""
