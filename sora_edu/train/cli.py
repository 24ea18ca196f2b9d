"""``sora-edu fit``: LightningCLI over any LightningModule / DataModule of the package.

    sora-edu fit --config vit_digits.yaml                 # a packaged config, by name
    sora-edu fit --config sora_edu/configs/vit_digits.yaml --trainer.max_steps=200
    sora-edu fit --config vit_digits.yaml --print_config  # the full, resolved config

Notebooks build the very same objects with :func:`from_config` and only override sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lightning.pytorch.cli import LightningCLI

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def config_path(name: str | Path) -> Path:
    """A config file path, or the name of a packaged config (``vit_digits`` or ``vit_digits.yaml``)."""
    path = Path(name)
    if path.exists():
        return path
    packaged = CONFIGS / (path if path.suffix else path.with_suffix(".yaml"))  # e.g. scale/ddp.yaml
    if packaged.exists():
        return packaged
    known = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
    raise FileNotFoundError(f"no config {str(name)!r}: not a file, and not a packaged config ({known})")


def _resolve_configs(args: Sequence[str]) -> list[str]:
    out, it = [], iter(args)
    for a in it:
        if a == "--config":
            out += [a, str(config_path(next(it)))]
        elif a.startswith("--config="):
            out.append("--config=" + str(config_path(a.split("=", 1)[1])))
        else:
            out.append(a)
    return out


def make_cli(args: Sequence[str] | None, run: bool = True, **kwargs) -> LightningCLI:
    # Built without running (notebooks, the cache): no config.yaml is written; with no
    # logger it would land in the working directory. The cache keeps the config itself.
    save = {"save_config_kwargs": {"overwrite": True}} if run else {"save_config_callback": None}
    return LightningCLI(
        model_class=None, datamodule_class=None, subclass_mode_model=True, subclass_mode_data=True,
        args=_resolve_configs(list(args)) if args is not None else None, run=run, **save, **kwargs,
    )


def main(args: Sequence[str]) -> None:
    """Entry point of ``sora-edu fit|validate|test|predict ...``. A ``fit`` that runs to its
    end from scratch also puts the model in the cache (``sora_edu.train.cached``), keyed by
    its config, so notebooks, ``sora-edu sample`` and ``load_or_train`` reuse it."""
    import time

    from .callbacks import History

    args = list(args)
    fitting = bool(args) and args[0] == "fit" and not any(a.startswith("--ckpt_path") for a in args)
    start = time.perf_counter()
    cli = make_cli(args, run=True, **({"trainer_defaults": {"callbacks": [History()]}} if fitting else {}))
    trainer = cli.trainer
    finished = fitting and trainer.state.finished and not trainer.interrupted and trainer.is_global_zero
    if finished and any(a.startswith("--config") for a in args):
        from .cached import save_fitted

        path = save_fitted(cli, seconds=time.perf_counter() - start)
        print(f"cached the fitted model for notebooks and `sora-edu sample`: {path}")


def from_config(name: str | Path, *overrides: str) -> LightningCLI:
    """Build model, datamodule and trainer from a config plus ``--key=value`` overrides,
    without running: ``cli = from_config("vit_digits", "--trainer.max_steps=100")``;
    then ``cli.trainer.fit(cli.model, cli.datamodule)``."""
    import warnings

    path = config_path(name)
    if "--trainer.enable_checkpointing=false" in overrides:
        path = _without_checkpoints(path)
    with warnings.catch_warnings():
        # Inside Jupyter, sys.argv holds the kernel's own arguments; `args` is what counts.
        warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
        return make_cli(["--config", str(path), *overrides], run=False)


def _without_checkpoints(path: Path) -> Path:
    """The config without its ModelCheckpoint callbacks (a copy in a temp folder), for runs
    built with checkpointing off (notebooks, the cache): Lightning refuses both at once."""
    import tempfile

    import yaml

    config = yaml.safe_load(path.read_text())
    callbacks = (config.get("trainer") or {}).get("callbacks")
    if not isinstance(callbacks, list):
        return path
    kept = [c for c in callbacks if not str((c or {}).get("class_path", "")).endswith("ModelCheckpoint")]
    if len(kept) == len(callbacks):
        return path
    config["trainer"]["callbacks"] = kept
    folder = Path(tempfile.gettempdir()) / "sora_edu_configs"
    folder.mkdir(exist_ok=True)
    copy = folder / path.name  # same name: the cache is keyed by the config's name and content
    from ..viz import write_atomic  # several processes (DDP ranks) may write it at once

    write_atomic(copy, yaml.safe_dump(config, sort_keys=False).encode())
    return copy
