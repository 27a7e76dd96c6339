"""pyproject's filterwarnings: a warning from our own code fails its test; the third-party warnings the
tests provoke on purpose are silenced by name; any other third-party warning is only reported."""

from __future__ import annotations

import warnings

import pytest


def warn_from(module: str, category: type[Warning], message: str) -> None:
    """Raise `message` as if from inside `module` (warnings attributes it by the frame's __name__)."""
    code = compile(f"import warnings\nwarnings.warn({message!r}, {category.__name__})",
                   f"{module.replace('.', '/')}.py", "exec")
    exec(code, {"__name__": module, category.__name__: category})  # noqa: S102 - fixed test snippet


@pytest.mark.parametrize("module", ["gateway.app", "services.core.imaging", "training.evaluate",
                                    "benchmarks.serving", "tests.support"])
@pytest.mark.parametrize("category", [DeprecationWarning, UserWarning, RuntimeWarning])
def test_a_warning_from_our_own_code_is_an_error(module: str, category: type[Warning]) -> None:
    with pytest.raises(category, match="ours"):
        warn_from(module, category, "ours")


@pytest.mark.parametrize(("module", "category", "message"), [
    ("sklearn.metrics._classification", UserWarning, "y_pred contains classes not in y_true"),
    ("pydicom.valuerep", UserWarning, "Invalid value for VR DS: 'NaN'."),
    ("pydicom.pixels.processing", RuntimeWarning, "invalid value encountered in multiply"),
    ("keras.src.backend.tensorflow.core", DeprecationWarning,
     "__array__ implementation doesn't accept a copy keyword, so passing copy=False failed."),
    ("fastapi.testclient", UserWarning,
     "Using `httpx` with `starlette.testclient` is deprecated; install `httpx2` instead."),
])
def test_the_third_party_warnings_tests_provoke_are_silenced(module: str, category: type[Warning],
                                                             message: str) -> None:
    with warnings.catch_warnings(record=True) as caught:   # keeps the configured filters
        warn_from(module, category, message)
    assert caught == []


def test_another_third_party_warning_is_reported_not_raised() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warn_from("somelibrary.module", DeprecationWarning, "an unknown library's deprecation")
        warn_from("pydicom.valuerep", DeprecationWarning, "a pydicom deprecation is not silenced")
    assert [str(w.message) for w in caught] == ["an unknown library's deprecation",
                                                 "a pydicom deprecation is not silenced"]
