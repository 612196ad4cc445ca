"""Fan-out retries: infrastructure errors are retried, user errors never (real Prefect states and
Ray's own exception classes)."""

from __future__ import annotations

import pytest
import ray.exceptions
from prefect.states import Completed, Failed
from pydantic import BaseModel, ValidationError

from components.recipe import RecipeError
from tasks.executor import is_infrastructure_error, retry_infrastructure


class _Cfg(BaseModel):
    n: int


def _validation_error() -> ValidationError:
    try:
        _Cfg.model_validate({"n": "many"})
    except ValidationError as e:
        return e
    raise AssertionError("no validation error")


def _wrapped(cause: BaseException) -> BaseException:
    """What ``ray.get`` raises when a task body raised ``cause``."""
    return ray.exceptions.RayTaskError("compress", "Traceback ...", cause).as_instanceof_cause()


INFRA = [ray.exceptions.WorkerCrashedError(), ray.exceptions.NodeDiedError("node gone"), ConnectionResetError("reset"),
         OSError(5, "I/O error"), TimeoutError("slow"), _wrapped(ConnectionError("refused"))]
USER = [RecipeError("compress.variants: unknown"), ValueError("bad value"), _validation_error(),
        FileNotFoundError("no such file"), PermissionError("denied"), _wrapped(ValueError("bad")), KeyError("x")]


@pytest.mark.parametrize("exc", INFRA, ids=lambda e: type(e).__name__)
def test_infrastructure_errors_are_retried(exc):
    assert is_infrastructure_error(exc)
    assert retry_infrastructure(None, None, Failed(data=exc)) is True


@pytest.mark.parametrize("exc", USER, ids=lambda e: type(e).__name__)
def test_user_errors_are_never_retried(exc):
    assert not is_infrastructure_error(exc)
    assert retry_infrastructure(None, None, Failed(data=exc)) is False


def test_a_completed_state_is_not_retried():
    assert retry_infrastructure(None, None, Completed(data=1)) is False
