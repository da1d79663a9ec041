"""Notebook parameters: validate profile, device and seed; pick per-profile knobs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROFILES = ("smoke", "full")
DEVICES = ("auto", "cpu", "cuda")
# numpy seeds only below 2**32 and the notebooks derive more seeds by adding small offsets (seed + 1000):
# below 2**31 every derived seed stays valid for numpy, torch, TensorFlow and JAX
MAX_SEED = 2**31 - 1


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
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ParameterError(f"seed={seed!r} is not allowed; use an integer from 0 to {MAX_SEED} (2**31 - 1), "
                             "such as 0.")
    return Params(profile=profile, device=device, seed=seed)


def by_profile(profile: str, **choices: dict) -> dict:
    """Pick each knob for a profile: by_profile("smoke", epochs={"smoke": 2, "full": 100})."""
    _check_choice("profile", profile, PROFILES)
    return {name: options[profile] for name, options in choices.items()}


def check_choice(name: str, value: Any, allowed) -> Any:
    """Validate any other enumerated notebook parameter the same way."""
    _check_choice(name, value, tuple(allowed))
    return value
