"""The per-step x̂0 the cell loop needs, for the schedulers whose step it can be written for.

Everything is expressed in DDPM form, z_d = α_t x0 + σ_t ε, whatever the scheduler's own
parameterisation, so AdaIN and the guidance weight mean the same under every scheduler:

- Euler and Euler-ancestral keep z in sigma space (z = x0 + σ ε): z_d = z / √(σ² + 1),
  α_t = 1 / √(σ² + 1), σ_t = σ / √(σ² + 1).
- DDIM and LCM keep z in DDPM form: α_t = √ᾱ_t, σ_t = √(1 - ᾱ_t).

x̂0 = (z_d - σ_t ε̂) / α_t for ε-prediction (SDXL), and x̂0 = α_t z_d - σ_t v̂ for
v-prediction (SD 2.1-768; GP's Eq. 6 is this form). After the loop edits x̂0 or z, the model
output handed to `scheduler.step` is rebuilt from (x̂0, ε̂), so the scheduler's own x0 is the
edited one. The coefficients are read without calling `step()`, which advances Euler's and
LCM's internal step index. Multistep solvers (DPM++, UniPC ...) keep a history of model
outputs that an edited x̂0 would contradict: they are refused.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

# name -> (diffusers class, how z is parameterised)
SCHEDULERS = {"euler": ("EulerDiscreteScheduler", "sigma"),
              "euler-ancestral": ("EulerAncestralDiscreteScheduler", "sigma"),
              "ddim": ("DDIMScheduler", "alpha"),
              "lcm": ("LCMScheduler", "alpha")}
BY_CLASS = {cls: name for name, (cls, _) in SCHEDULERS.items()}
PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v_prediction"}
SCHEDULER_CHOICES = ("model",) + tuple(SCHEDULERS)


def resolve_scheduler(requested: str, model_class: str) -> str:
    """The scheduler name the loop will run: the model's own (`model`) when supported, else the
    one asked for. An unsupported model scheduler is a UsageError that says how to swap it."""
    if requested == "model":
        name = BY_CLASS.get(model_class)
        if name is None:
            raise UsageError(f"the model's scheduler {model_class} is not supported by the cell loop, which needs "
                             f"x̂0 at every step (no multistep solvers): pass --scheduler "
                             f"{'|'.join(SCHEDULERS)} to swap it")
        return name
    if requested not in SCHEDULERS:
        raise UsageError(f"unknown --scheduler {requested!r}: choose one of {', '.join(SCHEDULER_CHOICES)}")
    return requested


def check_prediction(prediction_type: str) -> str:
    if prediction_type not in PREDICTIONS:
        raise UsageError(f"the model's scheduler predicts {prediction_type!r}; the cell loop supports "
                         f"{', '.join(PREDICTIONS)}")
    return prediction_type


def swap_scheduler(D, scheduler, name: str):
    """The pipeline's scheduler as `name` (same config: betas, spacing, prediction type)."""
    cls = getattr(D, SCHEDULERS[name][0])
    return scheduler if type(scheduler) is cls else cls.from_config(scheduler.config)


@dataclass(frozen=True)
class Coeffs:
    alpha: float    # α_t
    sigma: float    # σ_t
    c: float        # z_d = c * z (the scheduler's own z)


def coeffs(scheduler, kind: str, t) -> Coeffs:
    """α_t, σ_t and the sigma-space factor at timestep t. For Euler the step index must be set,
    which `scale_model_input` does on the first step."""
    if kind == "sigma":
        sig = float(scheduler.sigmas[scheduler.step_index])
        c = 1.0 / (sig * sig + 1.0) ** 0.5
        return Coeffs(c, sig * c, c)
    acp = float(scheduler.alphas_cumprod[int(t)])
    return Coeffs(acp ** 0.5, (1.0 - acp) ** 0.5, 1.0)


def x0_eps(z_d, out, k: Coeffs, prediction: str):
    """(x̂0, ε̂) from the DDPM-form latent and the model output."""
    if prediction == "epsilon":
        return (z_d - k.sigma * out) / k.alpha, out
    return k.alpha * z_d - k.sigma * out, k.sigma * z_d + k.alpha * out


def model_output(x0, eps, k: Coeffs, prediction: str):
    """The model output that makes the scheduler see (x0, eps): ε itself, or v = α ε - σ x0."""
    return eps if prediction == "epsilon" else k.alpha * eps - k.sigma * x0
