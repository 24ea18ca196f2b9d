"""Samplers: from pure noise to data, with any network that :class:`~.process.Diffusion`
can read.

* ``"ddpm"``: ancestral sampling (DDPM, arXiv 2006.11239): at each step draw from the
  posterior ``q(x_s | x_t, x0_hat)``. With ``steps < T`` the schedule is respaced (improved
  DDPM, arXiv 2102.09672): the same posterior between the kept steps.
* ``"ddim"``: DDIM (Song et al., arXiv 2010.02502): ``x_s = sqrt(a_s) x0_hat +
  sqrt(1 - a_s - sigma^2) eps_hat + sigma z`` with ``sigma = eta * (DDPM's)``. ``eta = 0`` is
  deterministic and good in 25 steps; ``eta = 1`` is DDPM again.
* ``"euler"`` / ``"heun"``: integrate the flow ODE ``dx/dt = v`` from ``t = 1`` to ``0``
  (first and second order), for the ``"flow"`` objective.

Classifier-free guidance (Ho & Salimans, arXiv 2207.12598) mixes the conditional and
unconditional predictions, ``out = u + s (c - u)``; the network learned both because its
condition was dropped (replaced by a *null* condition) for some training examples.

Autoguidance (Karras et al., "Guiding a Diffusion Model with a Bad Version of Itself",
arXiv 2406.02507) adds ``a (c - w)``, where ``w`` is a *weak* version of the same network
(here: its own weights from earlier in training) given the same condition. Where the weak
model errs the way the good one still does a little (a cross's arms rounded off), the
difference points away from the error: it sharpens what is drawn without the overshoot
that a larger CFG scale brings.
"""

from __future__ import annotations

from typing import Callable

import torch

from .process import Diffusion

SAMPLERS = ("ddpm", "ddim", "euler", "heun")


def _cat(a, b):
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, dict):
        return {k: _cat(a[k], b[k]) for k in a}
    raise TypeError(f"cannot batch a condition of type {type(a).__name__} for guidance")


def classifier_free_guidance(model: Callable, scale: float, null_cond=None, weak: Callable | None = None,
                             autoguidance: float = 0.0) -> Callable:
    """``model(x, t, cond)`` -> a guided ``model(x, t, cond)``: ``u + scale (c - u)``, plus
    ``autoguidance * (c - weak(x, t, cond))`` when ``autoguidance`` is not 0. ``scale = 1``
    and no autoguidance is plain conditional sampling (one network call); otherwise ``c`` and
    ``u`` come from one batched call on ``[cond, null_cond]`` (and ``w`` from a second)."""
    if autoguidance and weak is None:
        raise ValueError(f"autoguidance {autoguidance} needs a weak model (weak=): a worse version of the same network")
    if scale == 1.0 and not autoguidance:
        return model
    if scale != 1.0 and null_cond is None:
        raise ValueError(f"classifier-free guidance at scale {scale} needs a null condition (null_cond), "
                         "the one the model saw when its condition was dropped in training")

    def guided(x, t, cond):
        if scale == 1.0:
            c = out = model(x, t, cond)
        else:
            c, u = model(torch.cat([x, x]), torch.cat([t, t]), _cat(cond, null_cond)).chunk(2)
            out = u + scale * (c - u)
        if autoguidance:
            out = out + autoguidance * (c - weak(x, t, cond))
        return out

    return guided


def _discrete_times(diffusion: Diffusion, steps: int) -> list[int]:
    if not 1 <= steps <= diffusion.steps:
        raise ValueError(f"steps must be in [1, {diffusion.steps}], got {steps}")
    ts = torch.linspace(diffusion.steps - 1, 0, steps).round().long().unique_consecutive()
    return ts.tolist()


@torch.no_grad()
def sample(diffusion: Diffusion, model: Callable, shape: tuple[int, ...], cond=None, *, sampler: str = "ddim",
           steps: int = 25, eta: float = 0.0, guidance: float = 1.0, null_cond=None, clip: float | None = None,
           generator: torch.Generator | None = None, device=None, chain: list | None = None,
           start: torch.Tensor | None = None, t_start: float = 1.0, weak: Callable | None = None,
           autoguidance: float = 0.0) -> torch.Tensor:
    """Draw ``shape`` samples. ``clip`` clamps each ``x0`` estimate (1.0 for pixels in
    [-1, 1]; None for latents). Pass a list as ``chain`` to collect ``(t, x_t, x0_hat)`` at
    every step. Seeded by ``generator`` (same generator state, same samples). ``weak`` and
    ``autoguidance``: see :func:`classifier_free_guidance`.

    SDEdit (Meng et al., arXiv 2108.01073; flow samplers): with ``start`` data and
    ``t_start < 1`` the path begins at ``x_t = (1 - t_start) start + t_start eps`` instead of
    pure noise and runs ``round(steps * t_start)`` steps: ``t_start`` is the edit strength
    (0 returns ``start``, 1 ignores it)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if diffusion.is_flow != (sampler in ("euler", "heun")):
        raise ValueError(f"sampler {sampler!r} does not fit the {diffusion.objective!r} objective: "
                         "use 'euler' or 'heun' for 'flow', 'ddpm' or 'ddim' otherwise")
    if not 0.0 <= t_start <= 1.0:
        raise ValueError(f"t_start (the edit strength) must be in [0, 1], got {t_start}")
    if start is not None and not diffusion.is_flow:
        raise ValueError("starting from data (SDEdit) is implemented for the flow samplers ('euler', 'heun')")
    net = classifier_free_guidance(model, guidance, null_cond, weak, autoguidance)
    x = torch.randn(shape, generator=generator, device=device)
    if start is not None:
        if tuple(start.shape) != tuple(shape):
            raise ValueError(f"start has shape {tuple(start.shape)}, expected {tuple(shape)}")
        x = (1 - t_start) * start.to(x) + t_start * x
        steps = max(1, round(steps * t_start)) if t_start > 0 else 0

    def estimate(x, t):
        tt = torch.full((shape[0],), t, device=x.device, dtype=torch.float32 if diffusion.is_flow else torch.long)
        x0, eps = diffusion.predict(net(x, diffusion.model_time(tt), cond), x, tt)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            s, n = diffusion.coefficients(tt, x)
            eps = (x - s * x0) / n.clamp_min(1e-8)
        if chain is not None:
            chain.append((t, x.clone(), x0.clone()))
        return x0, eps

    def noise():
        return torch.randn(shape, generator=generator, device=x.device)

    if diffusion.is_flow:
        # Evenly spaced in the unshifted time, so a shifted model takes more steps near noise.
        top = t_start if start is not None else 1.0
        times = diffusion.shift(torch.linspace(diffusion.unshift(top), 0.0, steps + 1, dtype=torch.float64)).tolist()
        times[0] = top
        for t, s in zip(times[:-1], times[1:]):
            x0, eps = estimate(x, t)
            v = eps - x0
            if sampler == "heun" and s > 0:
                x_euler = x + (s - t) * v
                x0_s, eps_s = estimate(x_euler, s)
                v = 0.5 * (v + (eps_s - x0_s))
            x = x + (s - t) * v
        return x

    alpha_bar = diffusion.schedule.alpha_bar.tolist()
    ts = _discrete_times(diffusion, steps)
    for i, t in enumerate(ts):
        x0, eps = estimate(x, t)
        a_t = alpha_bar[t]
        a_s = alpha_bar[ts[i + 1]] if i + 1 < len(ts) else 1.0
        if sampler == "ddpm":
            # Posterior q(x_s | x_t, x0) of the (respaced) forward process.
            alpha_ts = a_t / a_s
            beta_ts = 1 - alpha_ts
            mean = (a_s ** 0.5 * beta_ts / (1 - a_t)) * x0 + (alpha_ts ** 0.5 * (1 - a_s) / (1 - a_t)) * x
            var = beta_ts * (1 - a_s) / (1 - a_t)
            x = mean + var ** 0.5 * noise() if i + 1 < len(ts) else mean
        else:
            sigma = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)) ** 0.5
            x = a_s ** 0.5 * x0 + max(1 - a_s - sigma ** 2, 0.0) ** 0.5 * eps
            if sigma > 0 and i + 1 < len(ts):
                x = x + sigma * noise()
    return x
