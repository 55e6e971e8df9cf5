"""The worker's precision settings: JOBS_DTYPE / JOBS_QUANTIZE and their per-size
overrides reach `Llama.load` through `model_for`, and an unknown value stops the process
at start with the variable named."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from django.core.exceptions import ImproperlyConfigured

from core.env import env_choice, env_size_choices

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def load_demo(demo_checkpoint, settings, monkeypatch, tmp_path, db):
    """model_for(demo) in this process, its checkpoint copied instead of fetched."""
    from catalog.models import ModelVariant
    from inference import worker

    def fetch(*, variant, directory):
        shutil.copytree(demo_checkpoint, directory, dirs_exist_ok=True)

    monkeypatch.setattr(worker, "checkpoint_fetch", fetch)
    monkeypatch.setattr(worker, "_models", {})
    monkeypatch.setattr(worker, "_groups", {})
    settings.JOBS_MODEL_CACHE_DIR = tmp_path
    settings.JOBS_DEVICE = "cpu"
    settings.JOBS_TORCH_THREADS = 1
    variant = ModelVariant.objects.get(slug="demo")
    return lambda: worker.model_for(variant)


@pytest.mark.parametrize(
    ("overrides", "dtype", "quantize"),
    [
        ({}, torch.float32, None),
        ({"JOBS_QUANTIZE": "int8"}, torch.float32, "int8"),
        ({"JOBS_QUANTIZE_SIZES": {"demo": "q8_0"}}, torch.float32, "q8_0"),
        ({"JOBS_DTYPE": "bfloat16"}, torch.bfloat16, None),
        # A size's own entry wins over the global one; another size's is ignored.
        (
            {
                "JOBS_QUANTIZE": "int8",
                "JOBS_DTYPE_SIZES": {"demo": "bfloat16", "65b": "float16"},
                "JOBS_QUANTIZE_SIZES": {"demo": ""},
            },
            torch.bfloat16,
            None,
        ),
        (
            {"JOBS_DTYPE": "bfloat16", "JOBS_QUANTIZE_SIZES": {"demo": "int8"}},
            torch.bfloat16,
            "int8",
        ),
    ],
)
def test_model_for_loads_the_configured_precision(load_demo, settings, overrides, dtype, quantize):
    from inference.llama.generation import SamplingParams

    for name, value in overrides.items():
        setattr(settings, name, value)
    llama = load_demo()
    assert llama.model.dtype == dtype
    assert llama.model.quantize == quantize
    kind = llama.model.layers[0].attention.qkv.kind
    assert kind == quantize if quantize else kind in ("packed", "plain")
    [done] = llama.generate([[1, 5, 9]], SamplingParams(max_new_tokens=4))  # it runs
    assert len(done.tokens) == 4


def test_settings_name_every_dtype_the_engine_knows():
    from django.conf import settings

    from inference.llama.engine import DTYPES
    from inference.llama.kernels import QUANT_MODES

    assert set(settings.JOBS_DTYPES) == {"auto", *DTYPES}
    assert set(settings.JOBS_QUANTIZE_MODES) == {"none", *QUANT_MODES}


def test_choice_readers_refuse_unknown_values_naming_the_variable(monkeypatch):
    choices = ("none", "int8")
    monkeypatch.setenv("X_Q", " INT8 ")
    assert env_choice("X_Q", "none", choices) == "int8"
    monkeypatch.setenv("X_Q", "")
    assert env_choice("X_Q", "none", choices) == "none"
    monkeypatch.setenv("X_Q", "int4")
    with pytest.raises(ImproperlyConfigured, match=r"X_Q must be one of none, int8; got 'int4'"):
        env_choice("X_Q", "none", choices)
    monkeypatch.setenv("X_S", "65b:int8, 7b:none")
    assert env_size_choices("X_S", choices) == {"65b": "int8", "7b": "none"}
    for bad in ("65b:int4", "65b", ":int8", "65b:int8,7b"):
        monkeypatch.setenv("X_S", bad)
        with pytest.raises(ImproperlyConfigured, match="X_S must list size:value pairs"):
            env_size_choices("X_S", choices)


def test_an_unknown_precision_stops_the_process_at_start():
    import os

    env = {**os.environ, "JOBS_DTYPE_SIZES": "65b:float8"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "JOBS_DTYPE_SIZES must list size:value pairs" in result.stderr
    assert "'65b:float8'" in result.stderr
