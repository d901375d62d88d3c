"""Built-in configs shipped inside the package (the demo must run on a fresh install with no repo checkout)."""
from pathlib import Path

HERE = Path(__file__).resolve().parent


def demo_config_path() -> Path:
    return HERE / "demo.yaml"


def demo_train_config_path() -> Path:
    return HERE / "demo_train.yaml"
