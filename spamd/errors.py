"""The one exception tree of spamd; library errors are translated into it at the edges.

    SpamdError
    ├── ConfigError          config.toml is missing, unreadable or has a bad value
    ├── ModelError           a model version cannot be used
    │   ├── ModelNotFound    no such version / no active version
    │   └── ModelIntegrityError  a weight file does not match the manifest's sha256
    ├── ScoringError         scoring a message failed (crash, timeout)
    ├── StoreError           the SQL store cannot do what was asked
    │   └── SchemaOutOfDate  the database schema is older than the code (run `spamd db upgrade`)
    ├── DeliveryError        the downstream could not take the message
    │   ├── DeliveryTempFail the downstream is down or answered 4xx: the client must retry
    │   └── DeliveryRejected the downstream answered 5xx for every recipient
    └── TrainingError        a training run could not finish

Spam and ham are return values, never exceptions.
"""


class SpamdError(Exception):
    """Base of every error spamd raises on purpose."""


class ConfigError(SpamdError):
    """The configuration is missing, unreadable or has a bad value."""


class ModelError(SpamdError):
    """A model version cannot be loaded or used."""


class ModelNotFound(ModelError):
    """The asked-for model version (or any active version) does not exist."""


class ModelIntegrityError(ModelError):
    """A weight file's sha256 does not match the manifest: the file was changed or damaged."""


class ScoringError(SpamdError):
    """Scoring a message failed."""


class StoreError(SpamdError):
    """The SQL store failed."""


class SchemaOutOfDate(StoreError):
    """The database schema is older than this version of spamd."""


class DeliveryError(SpamdError):
    """The downstream did not take the message."""

    def __init__(self, message: str, code: int = 451, text: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.text = text


class DeliveryTempFail(DeliveryError):
    """The downstream is unreachable or answered 4xx; the sender must retry."""


class DeliveryRejected(DeliveryError):
    """The downstream refused the message permanently (5xx)."""


class TrainingError(SpamdError):
    """A training run could not finish."""
