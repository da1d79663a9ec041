"""Device choice with CPU fallback, an environment report, and seeding."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import random
from typing import Optional

from labkit.profile import check_choice, DEVICES

# name shown -> distributions that provide it (read from metadata: nothing is imported)
REPORT_PACKAGES = {"numpy": ("numpy",), "torch": ("torch",), "tensorflow": ("tensorflow", "tensorflow-cpu"),
                   "keras": ("keras",), "jax": ("jax",),
                   "transformers": ("transformers",), "monai": ("monai",), "tritonclient": ("tritonclient",)}
FRAMEWORKS = ("torch", "tensorflow", "jax", "keras")


def keras_backend() -> str:
    """The Keras 3 backend this process uses (KERAS_BACKEND, default 'tensorflow'), read without importing keras."""
    import sys
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def _gpu_count(framework: str) -> int:
    if framework == "keras":  # the GPU that counts is the one Keras' backend computes on
        framework = keras_backend()
    try:
        if framework == "jax":
            import jax
            return sum(d.platform == "gpu" for d in jax.devices())
        if framework == "torch":
            import torch
            return torch.cuda.device_count() if torch.cuda.is_available() else 0
        if framework == "tensorflow":
            import tensorflow as tf
            return len(tf.config.list_physical_devices("GPU"))
    except ImportError:
        return 0
    raise ValueError(f"framework={framework!r}; use one of {FRAMEWORKS}")


def select_device(device: str = "auto", framework: str = "torch") -> str:
    """'auto' -> 'cuda' when a GPU is visible to `framework`, else 'cpu'.

    An explicit 'cuda' on a machine without one is an error that says what to do, rather than a
    silent fallback that would make a 'GPU' number come from the CPU.
    """
    check_choice("device", device, DEVICES)
    gpus = _gpu_count(framework)
    if device == "auto":
        return "cuda" if gpus else "cpu"
    if device == "cuda" and not gpus:
        raise RuntimeError(
            f"device='cuda' was asked for, but {framework} sees no GPU. "
            "Run with device='auto' or 'cpu', or on a machine with an NVIDIA GPU and a CUDA build."
        )
    return device


def _version(dists) -> Optional[str]:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def machine_info(framework: str = "torch") -> dict:
    """What ran this: CPU model and cores, GPU name and count, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu, gpu_count = None, 0
    if framework == "keras":  # report the GPU Keras' backend computes on
        framework = keras_backend()
    if framework == "torch":
        try:
            import torch
            if torch.cuda.is_available():
                gpu_count = torch.cuda.device_count()
                gpu = torch.cuda.get_device_name(0)
        except ImportError:
            pass
    elif framework == "jax":
        gpu_count = _gpu_count("jax")
        if gpu_count:
            import jax
            gpu = [d for d in jax.devices() if d.platform == "gpu"][0].device_kind
    else:
        gpu_count = _gpu_count(framework)
        if gpu_count:
            import tensorflow as tf
            details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
            gpu = details.get("device_name", "GPU")
    return {
        "cpu": f"{cpu} ({os.cpu_count()} cores)",
        "gpu": gpu,
        "gpu_count": gpu_count,
        "python": platform.python_version(),
        "versions": {name: v for name, dists in REPORT_PACKAGES.items() if (v := _version(dists))},
    }


def environment_report(framework: str = "torch", show: bool = True) -> dict:
    """Print (and return) the machine and library versions a notebook runs on."""
    info = machine_info(framework)
    if show:
        print(f"python {info['python']} | CPU: {info['cpu']}")
        print(f"GPU: {info['gpu'] or 'none'} (count {info['gpu_count']})")
        if framework == "keras":
            print(f"Keras backend: {keras_backend()}")
        print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    return info


def seed_everything(seed: int) -> None:
    """Seed Python, numpy, torch and TensorFlow (whichever are installed)."""
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:
        pass
    try:
        import torch
        torch.manual_seed(seed)
    except ImportError:
        pass
    import sys
    if "tensorflow" in sys.modules:  # don't pay TF's import time in torch notebooks
        sys.modules["tensorflow"].random.set_seed(seed)
    if "keras" in sys.modules:  # Keras 3 seeds its own global generator (any backend)
        sys.modules["keras"].utils.set_random_seed(seed)
