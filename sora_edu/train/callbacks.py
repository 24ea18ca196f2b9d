"""Callbacks the notebooks use to look inside a run."""

from __future__ import annotations

import time

import lightning.pytorch as pl


class History(pl.Callback):
    """Keeps every logged scalar in memory, with the step and wall time, for plotting:
    ``history.series("train/loss") -> (steps, values)``. Rows recorded at the end of a
    validation run carry ``"validation": True`` (other rows repeat the last validation
    metrics, as Lightning's ``callback_metrics`` do)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self._start = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def _record(self, trainer, validation: bool = False) -> None:
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        row["step"] = trainer.global_step
        if validation:
            row["validation"] = True
        row["seconds"] = time.perf_counter() - (self._start or time.perf_counter())
        self.rows.append(row)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            self._record(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, validation=True)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        rows = [r for r in self.rows if key in r]
        # Keep the last value recorded at each step (validation overwrites the running one).
        by_step = {r["step"]: r[key] for r in rows}
        steps = sorted(by_step)
        return steps, [by_step[s] for s in steps]

    @property
    def seconds(self) -> float:
        return self.rows[-1]["seconds"] if self.rows else 0.0


class EMA(pl.Callback):
    """Exponential moving average of the weights, evaluated in validation and kept at the end.

    Uses ``torch.optim.swa_utils.AveragedModel`` with an EMA update; averages the
    LightningModule's ``attribute`` sub-module (default ``net``, the network being trained).
    During validation the averaged weights are swapped in; with ``apply_at_end`` they
    replace the trained ones when fitting ends, so what you save and sample is the EMA.
    """

    def __init__(self, decay: float = 0.999, attribute: str = "net", apply_at_end: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.attribute, self.apply_at_end = decay, attribute, apply_at_end
        self.ema = None
        self._backup = None

    @staticmethod
    def running(trainer, attribute: str | None = None) -> "EMA | None":
        """The trainer's EMA callback that has started averaging (``attribute``'s, if given), or None."""
        return next((c for c in trainer.callbacks if isinstance(c, EMA) and c.ema is not None
                     and attribute in (None, c.attribute)), None)

    def _target(self, pl_module):
        return getattr(pl_module, self.attribute)

    def on_fit_start(self, trainer, pl_module) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        if self.ema is None:
            self.ema = AveragedModel(self._target(pl_module), multi_avg_fn=get_ema_multi_avg_fn(self.decay),
                                     use_buffers=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ema.update_parameters(self._target(pl_module))

    def _swap_in(self, pl_module) -> None:
        target = self._target(pl_module)
        self._backup = {k: v.detach().clone() for k, v in target.state_dict().items()}
        target.load_state_dict(self.ema.module.state_dict())

    def _swap_out(self, pl_module) -> None:
        if self._backup is not None:
            self._target(pl_module).load_state_dict(self._backup)
            self._backup = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.ema is not None and not trainer.sanity_checking:
            self._swap_in(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._swap_out(pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.apply_at_end and self.ema is not None:
            self._target(pl_module).load_state_dict(self.ema.module.state_dict())

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict() if self.ema is not None else None}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict.get("ema")

    def on_train_start(self, trainer, pl_module) -> None:
        pending = getattr(self, "_pending", None)
        if pending is not None:
            self.ema.load_state_dict(pending)
            self._pending = None


class RNGState(pl.Callback):
    """Puts the random-number generators' states in every checkpoint and restores them
    when a run resumes (``--ckpt_path``), so the resumed run draws the very noise, times and
    dropout the uninterrupted run would have: resuming reproduces its loss curve bit for bit
    on CPU (with a resumable data module such as the folder and shard ones). Lightning
    itself restores weights, optimiser, schedulers and loop counters, but not these."""

    def __init__(self) -> None:
        self._pending = None

    def state_dict(self) -> dict:
        import random

        import numpy as np
        import torch

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos), "has_gauss": int(has_gauss),
                          "gauss": float(gauss)},
                "python": random.getstate()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Applied at the first step after resuming, not at load time: building the loaders
        # in between must not shift the streams.
        if self._pending is None:
            return
        import random

        import numpy as np
        import torch

        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))
        python = state["python"]
        random.setstate((python[0], tuple(python[1]), python[2]))
