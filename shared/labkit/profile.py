"""Notebook parameters: validate profile, device and seed; pick per-profile knobs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROFILES = ("smoke", "full")
DEVICES = ("auto", "cpu", "cuda")


class ParameterError(ValueError):
    """A notebook parameter has a value the notebook does not accept."""


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ParameterError(
            f"{name}={value!r} is not allowed; use one of {', '.join(repr(a) for a in allowed)}. "
            f"Set it in the notebook's parameters cell or with papermill -p {name} <value>."
        )


@dataclass(frozen=True)
class Params:
    profile: str
    device: str
    seed: int

    @property
    def smoke(self) -> bool:
        return self.profile == "smoke"

    def pick(self, smoke: Any, full: Any) -> Any:
        """The value for this profile: `p.pick(smoke=2, full=100)`."""
        return smoke if self.profile == "smoke" else full


def check_params(profile: str, device: str = "auto", seed: int = 0) -> Params:
    """Validate the three parameters every notebook has; raise a clear error otherwise."""
    _check_choice("profile", profile, PROFILES)
    _check_choice("device", device, DEVICES)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ParameterError(f"seed={seed!r} is not allowed; use a non-negative integer such as 0.")
    return Params(profile=profile, device=device, seed=seed)


def by_profile(profile: str, **choices: dict) -> dict:
    """Pick each knob for a profile: by_profile("smoke", epochs={"smoke": 2, "full": 100})."""
    _check_choice("profile", profile, PROFILES)
    return {name: options[profile] for name, options in choices.items()}


def check_choice(name: str, value: Any, allowed) -> Any:
    """Validate any other enumerated notebook parameter the same way."""
    _check_choice(name, value, tuple(allowed))
    return value
