"""``tinkex plan``: the per-device memory a base model needs to train and sample, without
loading its weights.

For: the command line of `tinkex_jax.local.model.plan_memory` (a model from a preset, a
directory or a ``config.json``; sequence length, batch, LoRA rank, dtype, mesh and memory
savers), whether the result fits a named accelerator or a memory size, and planning for more
devices than a CPU host has (the command re-runs itself in a child process with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``, since JAX fixes the device count when
it starts). Not for: the plan itself (the model layer compiles the server's own training and
sampling programs on abstract arrays and reads XLA's memory analysis) or running anything.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> configure_plan(parser)
    >>> args = parser.parse_args(["tinkex-jax/tiny", "--seq-len", "256", "--device", "t4"])
    >>> args.model, args.seq_len, args.batch, args.rank, args.device
    ('tinkex-jax/tiny', 256, 1, 32, 't4')
    >>> parse_size("80GiB"), parse_size("16 GB"), parse_size("1024")
    (85899345920, 16000000000, 1024)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..arguments import add_output_option, positive
from ..command import Command
from ..errors import EXIT_USAGE, CLIError, guarded
from ..output import format_properties, format_size, print_json

if TYPE_CHECKING:
    from ...local.model.plan import MemoryPlan

__all__ = ["COMMAND", "cmd_plan", "configure_plan", "parse_size"]

USABLE = 0.9
"""Share of a device's memory a plan may use (the rest: the runtime, fragmentation)."""

_CHILD_ENV = "TINKEX_PLAN_CHILD"
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.I)


def parse_size(text: str) -> int:
    """A memory size: bytes, or a number with ``KB``/``MB``/``GB``/``TB`` (powers of 1000)
    or ``KiB``/``MiB``/``GiB``/``TiB`` (powers of 1024).

    Example:
        >>> parse_size("141GB"), parse_size("8 gib"), parse_size("1.5MiB")
        (141000000000, 8589934592, 1572864)
        >>> parse_size("lots")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a size such as 80GiB, 16GB or 1024 (bytes), got 'lots'
    """
    match = _SIZE.match(text)
    if match is None or (match.group(3) and not match.group(2)):
        raise argparse.ArgumentTypeError(
            f"expected a size such as 80GiB, 16GB or 1024 (bytes), got {text!r}")
    number, unit, binary = float(match.group(1)), match.group(2).lower(), match.group(3)
    power = " kmgt".index(unit) if unit else 0
    return round(number * (1024 if binary else 1000) ** power)


def configure_plan(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tinkex plan``."""
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL",
                        help="the base model: a preset (tinkex-jax/small), a local Hugging "
                             "Face model directory, or its config.json (no weights are read)")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="a Hugging Face config.json to plan for, instead of MODEL")
    parser.add_argument("--seq-len", type=positive, default=2048, metavar="TOKENS",
                        help="tokens per sequence: training rows, and prompt plus completion "
                             "when sampling (rounded up to the server's length bucket; "
                             "default %(default)s)")
    parser.add_argument("--batch", type=positive, default=1, metavar="ROWS",
                        help="sequences per training call (default %(default)s)")
    parser.add_argument("--rank", type=positive, default=32,
                        help="LoRA rank (default %(default)s)")
    parser.add_argument("--num-samples", type=positive, default=1, metavar="N",
                        help="completions sampled at once (default %(default)s)")
    parser.add_argument("--dtype", default="auto",
                        choices=["auto", "checkpoint", "float32", "bfloat16", "float16"],
                        help="dtype of the base weights (default %(default)s: float32 on "
                             "CPU, the checkpoint's dtype on GPU / TPU)")
    parser.add_argument("--mesh", default=None, metavar="fsdp=N,tp=M",
                        help="device mesh to plan for, as `tinkex serve --mesh` takes it "
                             "(default: every device of --devices, or of this host, on fsdp)")
    parser.add_argument("--devices", type=positive, default=None, metavar="N",
                        help="plan for N devices of this platform; on CPU the command runs "
                             "itself again with N simulated devices (default: this host's, "
                             "or the count of --device)")
    parser.add_argument("--device", default=None, metavar="NAME",
                        help="say whether the plan fits this accelerator: t4, a100-40gb, "
                             "a100-80gb, h100, h200, tpu-v2-8, tpu-v3-8, tpu-v5e, tpu-v5e-8 "
                             "(its device count is the default --devices)")
    parser.add_argument("--memory", type=parse_size, default=None, metavar="SIZE",
                        help="say whether the plan fits this much memory per device, e.g. "
                             "80GiB or 16GB (default: the --device's, else this GPU's / "
                             "TPU's own)")
    savers = parser.add_argument_group(
        "memory savers", "as `tinkex serve` takes them (docs/local-backend.md, "
                         "'Accelerators and memory')")
    savers.add_argument("--remat", default="auto", choices=["auto", "off", "full", "dots"],
                        help="per-layer rematerialisation (default %(default)s: full from "
                             "100 M base parameters)")
    savers.add_argument("--attention", default="auto",
                        choices=["auto", "dense", "chunked", "cudnn"],
                        help="attention kernel (default %(default)s)")
    savers.add_argument("--token-budget", type=int, default=0, metavar="TOKENS",
                        help="most tokens per micro-batch of a training call (default "
                             "%(default)s: no splitting)")
    savers.add_argument("--sampler-weights", default="auto",
                        choices=["auto", "merged", "shared", "stacked"],
                        help="how samplers hold weights (default %(default)s)")
    add_output_option(parser)


def _model_of(args: argparse.Namespace) -> str:
    if (args.model is None) == (args.config is None):
        raise CLIError("tinkex plan needs one model: MODEL (a preset, a model directory or a "
                       "config.json) or --config FILE. Fix: e.g. `tinkex plan "
                       "tinkex-jax/small --seq-len 1024`.", exit_code=EXIT_USAGE)
    model = str(args.model if args.model is not None else args.config)
    from ...local.model.presets import PRESET_CONFIGS, PRESET_PREFIX

    bare = model[len(PRESET_PREFIX):] if model.startswith(PRESET_PREFIX) else model
    path = Path(model).expanduser()
    if bare not in PRESET_CONFIGS and not (path / "config.json").is_file() \
            and not path.is_file():
        presets = ", ".join(PRESET_PREFIX + name for name in sorted(PRESET_CONFIGS))
        where = "--config" if args.model is None else "MODEL"
        raise CLIError(f"{where} {model!r} is neither a preset ({presets}) nor a model "
                       "directory with a config.json nor a config.json file. Fix: check the "
                       "path, or name a preset.", exit_code=EXIT_USAGE)
    return model


def _device_limits(args: argparse.Namespace) -> tuple[str | None, int | None, int | None]:
    """(name, devices, bytes per device) to check the plan against."""
    from ...local.model.plan import DEVICE_MEMORY

    name, count, size = None, None, args.memory
    if args.device is not None:
        key = args.device.lower()
        if key not in DEVICE_MEMORY:
            raise CLIError(f"unknown --device {args.device!r}. Fix: pick one of "
                           f"{', '.join(DEVICE_MEMORY)}, or give --memory SIZE.",
                           exit_code=EXIT_USAGE)
        name, (count, nominal) = key, DEVICE_MEMORY[key]
        size = nominal if size is None else size
    return name, count, size


def _child_argv(args: argparse.Namespace, devices: int) -> list[str]:
    argv = ["plan", *([args.model] if args.model is not None else ["--config", args.config])]
    for flag, value in (("--seq-len", args.seq_len), ("--batch", args.batch),
                        ("--rank", args.rank), ("--num-samples", args.num_samples),
                        ("--dtype", args.dtype), ("--mesh", args.mesh),
                        ("--devices", devices), ("--device", args.device),
                        ("--memory", args.memory), ("--remat", args.remat),
                        ("--attention", args.attention), ("--token-budget", args.token_budget),
                        ("--sampler-weights", args.sampler_weights)):
        if value is not None:
            argv.append(f"{flag}={value}")
    return [*argv, "--json"] if args.json else argv


def _run_with_devices(args: argparse.Namespace, devices: int) -> int:
    """Run this plan in a child process with `devices` simulated CPU devices."""
    if os.environ.get(_CHILD_ENV):
        raise CLIError(f"--devices {devices}: the child process still sees too few devices. "
                       f"Fix: check that XLA_FLAGS has {_DEVICE_COUNT_FLAG}={devices}.")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith(_DEVICE_COUNT_FLAG)]
    env = {**os.environ, _CHILD_ENV: "1", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": " ".join([*flags, f"{_DEVICE_COUNT_FLAG}={devices}"])}
    proc = subprocess.run([sys.executable, "-m", "tinkex_jax.cli", *_child_argv(args, devices)],
                          env=env, capture_output=True, text=True, check=False)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode


def _mesh_sizes(args: argparse.Namespace, devices: int) -> dict[str, int] | None:
    """The mesh to plan on `devices` devices (None: one device, no mesh)."""
    from ...local.model.sharding import parse_mesh

    sizes = parse_mesh(args.mesh or "")
    tp = sizes.get("tp", 1)
    fsdp = sizes.get("fsdp", devices // tp if devices % tp == 0 else None)
    if fsdp is None or fsdp * tp != devices:
        raise CLIError(f"--mesh {args.mesh} does not cover the {devices} devices planned for "
                       "(fsdp x tp must equal them). Fix: change --mesh or --devices.",
                       exit_code=EXIT_USAGE)
    return None if devices == 1 else {"fsdp": fsdp, "tp": tp}


def _local_device_bytes() -> int | None:
    """This host's first accelerator's memory (None on CPU or when it does not say)."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    try:
        stats = device.memory_stats() or {}
    except Exception:  # some runtimes do not report memory
        return None
    limit = stats.get("bytes_limit")
    return int(limit) if limit else None


@guarded
def cmd_plan(args: argparse.Namespace) -> int:
    """Print the plan (or its JSON); 2 for a bad command line (the message names the flag)."""
    model = _model_of(args)
    name, device_count, device_bytes = _device_limits(args)
    devices = args.devices
    if devices is None and args.mesh is not None:
        from ...local.model.sharding import parse_mesh

        sizes = parse_mesh(args.mesh)
        if "fsdp" in sizes:
            devices = sizes["fsdp"] * sizes.get("tp", 1)
    if devices is None:
        devices = device_count
    import jax

    visible = jax.devices()
    if devices is not None and devices > len(visible):
        if visible[0].platform != "cpu":
            raise CLIError(f"{devices} devices asked for (--devices, --mesh or --device); this "
                           f"host has {len(visible)} {visible[0].platform} device(s). Fix: "
                           f"plan for at most {len(visible)}, or estimate on CPU with "
                           "JAX_PLATFORMS=cpu.", exit_code=EXIT_USAGE)
        return _run_with_devices(args, devices)
    devices = devices or len(visible)
    mesh = _mesh_sizes(args, devices)
    from ...local.model.options import RunOptions
    from ...local.model.plan import plan_memory

    options = RunOptions(remat=args.remat, attention=args.attention,
                         token_budget=args.token_budget, sampler_weights=args.sampler_weights)
    plan = plan_memory(model, seq_len=args.seq_len, batch=args.batch, rank=args.rank,
                       dtype=args.dtype, mesh=mesh, options=options,
                       num_samples=args.num_samples)
    if device_bytes is None:
        device_bytes = _local_device_bytes()
        if device_bytes is not None:
            name = f"this {plan.platform}"
    fits = None if device_bytes is None else plan.fits(device_bytes, usable=USABLE)
    if args.json:
        out = plan.to_json()
        out["model"] = model
        out["devices"] = devices
        out["device"] = None if device_bytes is None else {
            "name": name, "devices": device_count, "bytes_per_device": device_bytes,
            "usable_fraction": USABLE, "fits": fits}
        out["fits"] = fits
        print_json(out)
        return 0
    print(_describe(model, plan, devices, name, device_count, device_bytes, fits))
    return 0


def _count(n: int) -> str:
    """A parameter count in millions or billions.

    Example:
        >>> _count(751_632_384), _count(8_190_735_360), _count(427_008), _count(1_024)
        ('751.6 M', '8.19 B', '0.4 M', '1024')
    """
    if n >= 10**9:
        return f"{n / 1e9:.2f} B"
    return f"{n / 1e6:.1f} M" if n >= 10**5 else str(n)


def _describe(model: str, plan: MemoryPlan, devices: int, name: str | None,
              device_count: int | None, device_bytes: int | None, fits: bool | None) -> str:
    cfg = plan.config
    mesh = ",".join(f"{k}={v}" for k, v in plan.mesh.items())
    peak = max(plan.train_peak_bytes_per_device, plan.sample_peak_bytes_per_device)
    pairs = [
        ("Model", f"{model} ({cfg.architecture}, {cfg.n_layers} layers, d_model "
                  f"{cfg.d_model}, vocabulary {cfg.vocab_size}, "
                  f"{_count(cfg.num_params())} parameters)"),
        ("Setting", f"{plan.seq_len} tokens x {plan.batch} rows, LoRA rank {plan.rank}, "
                    f"{plan.dtype} base"),
        ("Devices", f"{devices} {plan.platform} (mesh {mesh})"),
        ("Memory savers", f"remat {plan.remat}, attention {plan.attention}, sampler "
                          f"weights {plan.sampler_weights}, {plan.micro_batches} "
                          f"micro-batch(es)"),
        ("Base / device", format_size(plan.params_bytes_per_device)),
        ("LoRA / device", f"{format_size(plan.lora_bytes_per_device)} (its gradient and "
                          "each AdamW moment as much again)"),
        ("Training peak / device", format_size(plan.train_peak_bytes_per_device)),
        ("Sampling peak / device", format_size(plan.sample_peak_bytes_per_device)),
    ]
    if device_bytes is not None:
        usable = int(device_bytes * USABLE)
        verdict = "fits" if fits else "does not fit"
        label = name or "--memory"
        count = f"{device_count} x " if device_count else ""
        line = (f"{verdict}: the larger peak, {format_size(peak)}, against "
                f"{format_size(usable)} usable ({int(USABLE * 100)} % of "
                f"{count}{format_size(device_bytes)})")
        if device_count and device_count != devices:
            line += (f"; planned for {devices} device(s), a {name} has {device_count} "
                     f"(--devices {device_count})")
        pairs.append((f"On {label}", line))
    text = format_properties(pairs)
    if plan.platform == "cpu" and name is not None:
        text += ("\nCompiled for CPU: an estimate for a GPU or TPU (XLA:CPU computes bfloat16 "
                 "matmuls in float32, which overstates scratch); run `tinkex plan` on the "
                 "accelerator for its exact numbers.")
    return text


COMMAND = Command("plan", "per-device memory of training and sampling a base model, "
                  "without loading its weights", configure_plan, cmd_plan)
