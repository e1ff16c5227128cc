"""The shapes everyone agrees on: jobs, results, errors, the fleet file. No I/O here."""

from schemas.admission import *  # noqa: F403
from schemas.admission import __all__ as _admission_all
from schemas.chat import *  # noqa: F403
from schemas.chat import __all__ as _chat_all
from schemas.config import *  # noqa: F403
from schemas.config import __all__ as _config_all
from schemas.durations import *  # noqa: F403
from schemas.durations import __all__ as _durations_all
from schemas.errors import *  # noqa: F403
from schemas.errors import __all__ as _errors_all
from schemas.jobs import *  # noqa: F403
from schemas.jobs import __all__ as _jobs_all
from schemas.ledger import *  # noqa: F403
from schemas.ledger import __all__ as _ledger_all
from schemas.outcome import *  # noqa: F403
from schemas.outcome import __all__ as _outcome_all
from schemas.settings import *  # noqa: F403
from schemas.settings import __all__ as _settings_all
from schemas.streaming import *  # noqa: F403
from schemas.streaming import __all__ as _streaming_all

__all__ = [*_admission_all, *_chat_all, *_config_all, *_durations_all, *_errors_all,
           *_jobs_all, *_ledger_all, *_outcome_all, *_settings_all, *_streaming_all]
