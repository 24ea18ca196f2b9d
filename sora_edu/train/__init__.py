"""Training harness: Lightning DataModules, LightningModules, callbacks and the CLI behind ``sora-edu fit``."""
