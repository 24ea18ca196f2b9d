"""The forward process and the training objectives, behind one interface.

Two families share it:

* **DDPM-style** (``objective`` = ``"eps"``, ``"x0"`` or ``"v"``): integer steps ``t`` in
  ``[0, T)``, ``x_t = sqrt(a) x0 + sqrt(1 - a) eps`` with ``a = alpha_bar[t]`` (DDPM,
  arXiv 2006.11239). The network predicts the noise ``eps`` (DDPM), the clean ``x0``, or
  the velocity ``v = sqrt(a) eps - sqrt(1 - a) x0`` (progressive distillation, Salimans &
  Ho, arXiv 2202.00512), which stays well scaled at both ends of the schedule.
* **Rectified flow / flow matching** (``objective = "flow"``): continuous ``t`` in
  ``[0, 1]``, the straight line ``x_t = (1 - t) x0 + t eps``, and the network predicts its
  velocity ``eps - x0`` (Liu et al., arXiv 2209.03003; Lipman et al., arXiv 2210.02747),
  or (``"flow_x0"``) the clean ``x0`` on the same path: a transformer whose patch holds
  more numbers than its width cannot carry the noise through to a velocity, while ``x0``
  is structured and low-dimensional (notebook 06 measures it), or (``"flow_edm"``) EDM's
  preconditioned target (Karras et al., arXiv 2206.00364): with ``r^2 = (1 - t)^2 + t^2``
  (unit-variance data), the network predicts ``(t x0 - (1 - t) eps) / r``, unit variance at
  every ``t``, from which ``x0 = ((1 - t) x_t + t r out) / r^2``: near ``t = 0`` the input
  is copied through by the formula (an ``x0`` head must learn the copy), near ``t = 1`` the
  output is ``x0`` (no noise to carry). On the variance-preserving path it is Salimans &
  Ho's ``v`` with the sign flipped. ``"flow_skip"`` keeps only EDM's skip: the network
  predicts ``x0 - (s / r^2) x_t``, the correction to the best linear guess, unscaled, so
  its error is the ``x0`` error at every ``t`` (EDM's output is that error times ``r / n``,
  which near ``t = 0`` asks the network for the noise). Its ``sigma_data`` (EDM's data
  scale, 1 by default) sets where the skip acts: at 0.25 the input is copied through only
  below ``t ~ 0.3`` and the network stays an ``x0`` predictor where the layout is decided.

Flow training times are uniform, or **logit-normal** (``flow_times="logit_normal"``:
``t = sigmoid(n)``, ``n ~ N(0, 1)``), which spends training on the middle of the path where
the velocity is hardest to guess; Stable Diffusion 3 (Esser et al., arXiv 2403.03206)
found it the best of the samplings it compared. Either can be **shifted towards noise**
(``flow_shift = s > 1``: ``t -> s t / (1 + (s - 1) t)``, SD3's eq. 23): the more numbers a
sample has, the more of the path is spent with the layout still undecided, and at high ``t``
an ``x0`` predictor trained on uniform times is worse than the data mean (measured on the
text-to-video latents). The samplers use the same shift on their time grid.

The loss is a plain MSE on the objective's target, or (``loss_weight="snr_clamp"``) for the
``x0`` objectives (and ``flow_edm``, converted) an MSE on ``x0`` weighted by ``clamp(SNR, 1, gamma)``, ``SNR = s^2 / n^2``:
plain x0 prediction weighs every time alike, while the details (an object's outline) are
decided late, at high SNR, where an x0 error costs the sampler most. Min-SNR weighting
(Hang et al., arXiv 2303.09556) caps the weight at ``gamma`` (5) for the same reason; the
floor of 1 keeps the early, layout-setting times at plain x0's weight.

Whatever it predicts, :meth:`Diffusion.predict` turns the output back into an estimate of
``(x0, eps)``; the samplers only ever use that. The network sees time as a float in
``[0, T)`` (flow times are scaled by ``T``), so one timestep embedding serves both.
Layouts: any ``x (B, ...)``; ``t (B,)``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .schedule import NoiseSchedule

OBJECTIVES = ("eps", "x0", "v", "flow", "flow_x0", "flow_edm", "flow_skip")
Model = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like)


class Diffusion:
    def __init__(self, objective: str = "eps", schedule: str = "cosine", steps: int = 1000,
                 flow_times: str = "uniform", loss_weight: str = "none", snr_gamma: float = 5.0,
                 flow_shift: float = 1.0, sigma_data: float = 1.0) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if loss_weight not in ("none", "snr_clamp"):
            raise ValueError(f"loss_weight must be 'none' or 'snr_clamp', got {loss_weight!r}")
        if loss_weight != "none" and objective not in ("x0", "flow_x0", "flow_edm", "flow_skip"):
            raise ValueError(f"loss_weight={loss_weight!r} is defined for the x0 objectives and flow_edm, not {objective!r}")
        if snr_gamma < 1:
            raise ValueError(f"snr_gamma caps clamp(SNR, 1, gamma) and must be >= 1, got {snr_gamma}")
        self.loss_weight, self.snr_gamma = loss_weight, snr_gamma
        if flow_times not in ("uniform", "logit_normal"):
            raise ValueError(f"flow_times must be 'uniform' or 'logit_normal', got {flow_times!r}")
        if flow_shift <= 0:
            raise ValueError(f"flow_shift must be > 0, got {flow_shift}")
        if sigma_data <= 0 or (sigma_data != 1.0 and objective != "flow_skip"):
            raise ValueError(f"sigma_data is flow_skip's data scale (> 0; the other objectives assume 1), "
                             f"got {sigma_data} with objective {objective!r}")
        self.objective, self.steps, self.flow_times, self.flow_shift = objective, steps, flow_times, flow_shift
        self.sigma_data = sigma_data
        self.schedule = NoiseSchedule(schedule, steps)

    @property
    def is_flow(self) -> bool:
        return self.objective.startswith("flow")

    # --- time -----------------------------------------------------------------------------

    def check_t(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t)
        if self.is_flow:
            if not t.dtype.is_floating_point or t.min() < 0 or t.max() > 1:
                raise ValueError(f"flow times must be floats in [0, 1], got {t.tolist() if t.numel() < 9 else t}")
            return t
        return self.schedule.check(t)

    def sample_t(self, batch: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training times: uniform steps, or flow times (uniform or logit-normal)."""
        if self.is_flow and self.flow_times == "logit_normal":
            return self.shift(torch.randn(batch, generator=generator, device=device).sigmoid())
        if self.is_flow:
            return self.shift(torch.rand(batch, generator=generator, device=device))
        return torch.randint(0, self.steps, (batch,), generator=generator, device=device)

    def shift(self, t: torch.Tensor) -> torch.Tensor:
        """Flow times moved towards noise by ``flow_shift`` (identity at 1; 0 and 1 stay put)."""
        s = self.flow_shift
        return t if s == 1 else s * t / (1 + (s - 1) * t)

    def unshift(self, t):
        """The inverse of :meth:`shift`: the uniform time that lands on ``t``."""
        s = self.flow_shift
        return t if s == 1 else t / (s - (s - 1) * t)

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the network is given: a float in ``[0, T)`` for both families."""
        return t.float() * self.steps if self.is_flow else t.float()

    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(signal, noise)`` coefficients of ``x_t = signal x0 + noise eps``."""
        if self.is_flow:
            tt = _bcast(self.check_t(t), like)
            return 1 - tt, tt
        a = self.schedule.at(t, like)
        return a.sqrt(), (1 - a).sqrt()

    # --- forward process and targets -----------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise ``x0`` to time ``t``: a draw from ``q(x_t | x0)``."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise {tuple(noise.shape)} must have the shape of x0 {tuple(x0.shape)}")
        if torch.as_tensor(t).shape != (x0.shape[0],):
            raise ValueError(f"expected one time per example, t of shape ({x0.shape[0]},), got {tuple(torch.as_tensor(t).shape)}")
        s, n = self.coefficients(t, x0)
        return s * x0 + n * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network should output at ``(x_t, t)``."""
        if self.objective == "eps":
            return noise
        if self.objective in ("x0", "flow_x0"):
            return x0
        if self.objective == "flow":
            return noise - x0
        s, n = self.coefficients(t, x0)
        if self.objective == "flow_edm":
            return (n * x0 - s * noise) / (s * s + n * n).sqrt()
        if self.objective == "flow_skip":
            return x0 - self.c_skip(s, n) * (s * x0 + n * noise)
        return s * noise - n * x0

    def c_skip(self, s: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """EDM's skip weight ``s d^2 / (s^2 d^2 + n^2)``, ``d = sigma_data``: the best linear
        guess of ``x0`` (of standard deviation ``d``) from ``x_t``. With ``d = 1`` (unit-variance
        latents) it stays near 1 up to ``t = 0.5`` and the network must predict noise there;
        a smaller ``d`` (the scale of the *detail* to keep) copies the input only near ``t = 0``
        and leaves the network an ``x0`` predictor wherever the layout is decided."""
        d2 = self.sigma_data ** 2
        return s * d2 / (s * s * d2 + n * n)

    def predict(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's output at ``(x_t, t)`` -> its estimates ``(x0, eps)``."""
        s, n = self.coefficients(t, x_t)
        if self.objective == "eps":
            return (x_t - n * out) / s, out
        if self.objective == "x0":
            return out, (x_t - s * out) / n.clamp_min(1e-8)
        if self.objective == "v":
            return s * x_t - n * out, n * x_t + s * out
        if self.objective == "flow_x0":  # eps = (x_t - (1 - t) x0) / t
            return out, (x_t - s * out) / n.clamp_min(1e-3)
        if self.objective == "flow_edm":  # solve x_t = s x0 + n eps, r out = n x0 - s eps
            r2 = s * s + n * n
            r = r2.sqrt()
            return (s * x_t + n * r * out) / r2, (n * x_t - s * r * out) / r2
        if self.objective == "flow_skip":  # x0 = out + c_skip x_t
            x0 = out + self.c_skip(s, n) * x_t
            return x0, (x_t - s * x0) / n.clamp_min(1e-3)
        return x_t - n * out, x_t + s * out  # flow: x0 = x_t - t v, eps = x_t + (1 - t) v

    def loss(self, model: Model, x0: torch.Tensor, cond=None, generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
             where: torch.Tensor | None = None, perturbation: torch.Tensor | None = None,
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error between the network's output and the objective's target at a
        random time and noise (or the given ``t`` and ``noise``), over the elements where
        ``where`` (a bool tensor broadcastable to ``x0``) is True, or all.

        ``weight`` (broadcastable to ``x0``, >= 0) weighs elements, divided by its mean so the
        loss keeps its scale. It must depend on the *condition* only (a layout's object
        cells), never on the target: the minimiser is then still the conditional mean.

        ``perturbation`` is added to the noise of the *input* only, the target keeps ``noise``
        (input perturbation, Ning et al., "Input Perturbation Reduces Exposure Bias in
        Diffusion Models", arXiv 2301.11706): the network is trained on states slightly off
        the forward process, as its own sampling errors put it."""
        if t is None:
            t = self.sample_t(x0.shape[0], x0.device, generator)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device) if generator is not None else torch.randn_like(x0)
        noised = noise if perturbation is None else noise + perturbation
        out = model(self.q_sample(x0, t, noised), self.model_time(t), cond)
        if out.shape != x0.shape:
            raise ValueError(f"the model returned {tuple(out.shape)} for inputs of shape {tuple(x0.shape)}")
        if self.loss_weight == "none" and where is None and weight is None:
            return F.mse_loss(out, self.target(x0, noise, t))
        error = (out - self.target(x0, noise, t)).pow(2)
        if weight is not None:
            weight = weight.to(error).expand_as(error)
            error = error * weight / weight.mean().clamp_min(1e-12)
        if self.loss_weight == "snr_clamp":
            s, n = self.coefficients(t, x0)
            snr = (s / n.clamp_min(1e-4)).pow(2).clamp(1.0, self.snr_gamma)  # clamp(SNR, 1, gamma)
            if self.objective == "flow_edm":  # its x0 error is (n / r) times its output's: weigh x0 errors alike
                snr = snr * n * n / (s * s + n * n)
            error = error * snr
        if where is None:
            return error.mean()
        where = where.expand_as(error)
        return error[where].sum() / where.sum().clamp_min(1)
