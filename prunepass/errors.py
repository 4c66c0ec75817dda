"""Errors raised by prunepass. Each message names the pass, option, node or file at fault
and says what to do about it."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type where it has none), for one-line
    errors that quote a library's reason."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


class PrunepassError(Exception):
    """Base class: the CLI prints these in one line and exits with ``exit_status``: 2, an
    error in what was given."""
    exit_status = 2


class PipelineError(PrunepassError):
    """A pipeline string, pass name or pass option is invalid."""


class TraceError(PrunepassError):
    """The model could not be traced into the IR."""


class PlanError(PrunepassError):
    """A prune plan or record cannot be applied to this model."""


class VerificationError(PrunepassError):
    """The IR is malformed or a numerical check failed after a transform (exit status 4)."""
    exit_status = 4


class CheckFailed(PrunepassError):
    """A gate the user set was not met, e.g. ``bench --min-speedup`` (exit status 4)."""
    exit_status = 4


class MissingExtra(PrunepassError):
    """An optional package is not installed; the message names the extra that brings it."""


def need(module: str, extra: str, what: str):  # noqa: ANN201
    """``import module``, or a one-line error naming the prunepass extra that installs it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{what} needs {module.split('.')[0]}, which is not installed: "
                           f"pip install 'prunepass[{extra}]'") from None
