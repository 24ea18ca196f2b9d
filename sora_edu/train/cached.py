"""Train once, reuse everywhere: models cached by the hash of the config that made them.

    vae = load_or_train_vae("vae_kl")               # trains on first use, loads afterwards
    module = load_or_train("vit_digits", "--trainer.max_epochs=20")

The key covers everything that changes the weights (model, data, seed, training length)
and nothing that does not (logging, progress bars, checkpoint folders).
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl

from ..cache import cache_dir, config_hash, load_checkpoint, save_checkpoint
from .callbacks import History
from .cli import config_path, from_config

# Callbacks that only watch a run: they do not change the weights, so not the cache key.
WATCHERS = ("sora_edu.train.diffusion.SampleLogger", "sora_edu.train.callbacks.History",
            "sora_edu.train.text_video.AdherenceCurve",
            "lightning.pytorch.callbacks.ModelCheckpoint", "lightning.pytorch.callbacks.LearningRateMonitor")
QUIET = ("--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_model_summary=false")
# Smoke mode's autoencoder: 10 steps, enough to encode and decode (nothing is judged on it).
SMOKE_VAE = ["--trainer.max_steps=10", "--data.init_args.num_val=4"]


def smoke_overrides(steps: int, *more: str, model_vae: bool = True) -> list[str]:
    """The overrides that run a latent text-to-video config (``t2v*``, ``clip_t2v``,
    ``dit_class``, ...) unchanged, or, with ``SORA_EDU_SMOKE=1``, shrunk to seconds:
    ``steps`` training steps on 64 clips encoded by a 10-step autoencoder, no callbacks;
    ``more`` come last either way. ``model_vae=False`` for a config whose model has no
    autoencoder of its own (CLIP: only its data module encodes). Notebooks and
    ``sora-edu demo`` share it, so smoke runs of both hit the same cache entries."""
    from ..cli import smoke

    if not smoke():
        return list(more)
    return [f"--trainer.max_steps={steps}", "--data.init_args.num_train=64", "--data.init_args.num_val=16",
            "--data.init_args.batch_size=16", f"--data.init_args.vae_overrides={SMOKE_VAE}", "--trainer.callbacks=[]",
            *([f"--model.init_args.vae_overrides={SMOKE_VAE}"] if model_vae else []), *more]


def _without_defaults(node):
    """A config node with every ``init_args`` entry equal to its class's default removed, so
    a new option added with a default does not change the key of models cached before it."""
    if isinstance(node, list):
        return [_without_defaults(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _without_defaults(v) for k, v in node.items()}
    if isinstance(node.get("class_path"), str) and isinstance(node.get("init_args"), dict):
        import importlib
        import inspect

        module, _, name = node["class_path"].rpartition(".")
        try:
            params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        except (ImportError, AttributeError, ValueError, TypeError):
            return node
        node["init_args"] = {k: v for k, v in node["init_args"].items()
                             if k not in params or params[k].default is inspect.Parameter.empty
                             or params[k].default != v}
    return node


def _key(cli) -> tuple[dict, str]:
    cfg = cli.config.as_dict()
    if "model" not in cfg and "fit" in cfg:  # a `sora-edu fit` run: the config sits under its subcommand
        cfg = cfg["fit"]
    trainer = cfg.get("trainer", {})
    weights_depend_on = {
        "model": _without_defaults(cfg.get("model")), "data": _without_defaults(cfg.get("data")), "seed": cfg.get("seed_everything"),
        "max_steps": trainer.get("max_steps"), "max_epochs": trainer.get("max_epochs"),
        "precision": trainer.get("precision"),
        "callbacks": [c for c in trainer.get("callbacks") or [] if c.get("class_path") not in WATCHERS] or None,
    }
    # A model depends on the cached models it starts from or reads: the autoencoder of its
    # latents (the model's and the data's), the model it was fine-tuned from, the CLIP its text
    # encoder or video tower started from or is aligned to, the shape probe it is aligned to, the
    # captioner that wrote its captions. Key it by theirs.
    model = (cfg.get("model") or {}).get("init_args", {})
    data = (cfg.get("data") or {}).get("init_args", {})
    sources = [(model, "vae", "vae_key"), (model, "init_from", "init_key"), (model, "text_from", "text_key"),
               (model, "repa_from", "repa_key"), (model, "probe_from", "probe_key"), (model, "video_from", "video_key"),
               (data, "vae", "data_vae_key")]
    if data.get("captions") == "recaptioned":
        sources.append((data, "captioner", "captioner_key"))
    for args, name, key in sources:
        if args.get(name):  # its overrides: vae_overrides, init_overrides, ..., captioner_overrides
            overrides = args.get(name.removesuffix("_from") + "_overrides") or []
            weights_depend_on[key] = config_key(args[name], *overrides)
    return weights_depend_on, config_hash(weights_depend_on)


_KEYS: dict[tuple, str] = {}


def config_key(config: str, *overrides: str) -> str:
    """The cache key of a config plus overrides. Remembered per process (and per version of
    the config file): reading it builds the whole CLI (~0.5 s), and every data module and
    dependent model asks again for the key of the autoencoder it uses."""
    memo = (str(config), tuple(overrides), config_path(config).stat().st_mtime_ns)
    if memo not in _KEYS:
        _KEYS[memo] = _key(from_config(config, *QUIET, *overrides))[1]
    return _KEYS[memo]


def _path(config: str, key: str) -> Path:
    return cache_dir() / Path(config_path(config)).stem / key


def cached_path(config: str, *overrides: str) -> Path:
    """Where the model a config (plus overrides) trains is, or would be, cached."""
    return _path(config, config_key(config, *overrides))


def load_or_train(config: str, *overrides: str, verbose: bool = True) -> pl.LightningModule:
    """The LightningModule a config trains: from the cache if present, else trained now and
    cached (with the autoencoder's latent scale factor computed first, if it has one).

    The module comes back with ``record``: the final ``metrics``, the training ``history``
    (rows of logged scalars with step and seconds, as :class:`History` keeps them) and
    ``train_seconds``, the same whether it was just trained or loaded.
    """
    cli = from_config(config, *QUIET, *overrides)
    resolved, key = _key(cli)
    path = _path(config, key)
    if (path / "model.safetensors").exists():
        cli.model.record = load_checkpoint(cli.model, path)
        if verbose:
            print(f"loaded {config} from the cache: {path}")
        return cli.model.eval()
    history = History()
    cli.trainer.callbacks.append(history)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    save_fitted(cli, path, time.perf_counter() - start)
    if verbose:
        print(f"trained {config} in {cli.model.record['train_seconds']:.0f} s and cached it: {path}")
    return cli.model.eval()


def fresh_fit(module: pl.LightningModule, stage: str, done: str) -> bool:
    """True in the ``setup`` of a fit that starts from step 0 (not a resume) and has not yet
    run the step that sets ``module.<done>``: where a module starts from a cached one's weights."""
    trainer = module._trainer
    return stage == "fit" and (trainer is None or trainer.global_step == 0) and not getattr(module, done, False)


def copy_weights(into, source, mismatch: str, fix: str) -> None:
    """Load ``source``'s weights into ``into`` (two ``nn.Module``), which must have the same
    names and shapes; otherwise a ValueError says ``mismatch``, the first mismatched names, ``fix``."""
    mine, theirs = into.state_dict(), source.state_dict()
    wrong = sorted(k for k in set(mine) | set(theirs) if k not in mine or k not in theirs or mine[k].shape != theirs[k].shape)
    if wrong:
        raise ValueError(f"{mismatch} (first mismatches: {wrong[:3]}); {fix}")
    into.load_state_dict(theirs)


def _train_in_worker(job: tuple[str, list[str], int]) -> str:
    config, overrides, threads = job
    import torch

    torch.set_num_threads(threads)
    load_or_train(config, *overrides, "--trainer.enable_progress_bar=false", verbose=False)
    return config


def load_or_train_many(runs: list[tuple[str, list[str]]], processes: int = 2) -> list[pl.LightningModule]:
    """:func:`load_or_train` for each ``(config, overrides)``, the ones not cached yet trained
    ``processes`` at a time, each process on its share of the threads. Small models do not
    keep two cores busy from one process (convolutions this size run far below the matmul
    rate), so on a 2-core laptop two 1-thread runs side by side finish ~1.2x sooner than
    one after the other. Their weights can differ in the last bits from a 2-thread run's (the
    order of floating-point sums), under the same cache key; figures are quoted from this path."""
    import concurrent.futures
    import multiprocessing

    import torch
    from tqdm.auto import tqdm

    todo = [(c, list(o)) for c, o in runs if not (cached_path(c, *o) / "model.safetensors").exists()]
    if todo and processes > 1 and len(todo) > 1:
        threads = max(1, torch.get_num_threads() // processes)
        # spawn: a fresh interpreter per worker (forking a process that holds torch threads can hang)
        with concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [(c, o, threads) for c, o in todo]
            list(tqdm(pool.map(_train_in_worker, jobs), total=len(jobs), desc=f"training, {processes} at a time"))
    return [load_or_train(c, *o, verbose=False) for c, o in runs]


def save_fitted(cli, path: Path | None = None, seconds: float | None = None) -> Path:
    """Cache the model a CLI has just fitted under its config's key (what ``sora-edu fit``
    calls when a run completes, so notebooks and ``sora-edu sample`` reuse it)."""
    resolved, key = _key(cli)
    if path is None:
        name = (cli.config.get("fit") or cli.config).get("config")
        # the file itself, not its stem: a config of your own is found by its path, not by name
        path = _path(str(name[0] if isinstance(name, list) else name), key)
    history = next((c for c in cli.trainer.callbacks if isinstance(c, History)), None)
    extra = {"train_seconds": seconds}
    if hasattr(cli.model, "compute_scale_factor"):
        import itertools

        dm = cli.datamodule
        # Validation clips when the data module has them; else 32 training batches (a video folder).
        has_val = type(dm).val_dataloader is not pl.LightningDataModule.val_dataloader
        loader = dm.val_dataloader() if has_val else itertools.islice(dm.train_dataloader(), 32)
        extra["scale_factor"] = cli.model.compute_scale_factor(loader)
    extra["metrics"] = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
    extra["history"] = history.rows if history is not None else []
    for callback in cli.trainer.callbacks:
        if hasattr(callback, "rows") and callback is not history:  # e.g. an adherence curve
            extra[type(callback).__name__] = callback.rows
    save_checkpoint(cli.model, resolved, path, extra)
    cli.model.record = {"config": resolved, **extra}
    return path


def load_or_train_vae(config: str = "vae_kl", *overrides: str, verbose: bool = True):
    """The video autoencoder (``VideoAutoencoder``, with ``scale_factor`` set) a config
    trains; its cache record is on ``.record``."""
    module = load_or_train(config, *overrides, verbose=verbose)
    module.net.record = module.record
    return module.net
