"""Launch configs of the ALiBi attention kernels: autotuning, forced and default configs.

Each kernel ("fwd", "dkdv", "dq", "decode") launches with, in order of precedence: a config
forced with `set_kernel_config`; under TRITON_INTERPRET=1 one small config; with autotuning off
(`set_autotune(False)` or MPT_TRITON_AUTOTUNE=0) or for "decode", the per-head-dim default;
otherwise the block sizes Triton's autotuner picks per (head dim, bucketed lengths, group, masks).
`_launch` applies that choice (the autotuner runs once per case; later launches of the case take
its pick directly); `autotuned_configs` reports what the autotuner picked. Inference calls (no
autograd, in eager mode) never start the autotuner: evaluation and generation meet a new length
bucket at almost every batch, and tuning each costs a dozen compiles and timings, far more than
it saves (tools/bench/RESULTS.md, session 25); they take the autotuner's pick where training
tuned the same case, else the default. Also here:
the lazy import of the kernel modules (Triton is imported only when a kernel runs) and the small
size helpers the launchers share.

`AUTOTUNE` is rebound by `set_autotune`: read it as `_configs.AUTOTUNE`, never import the name.
"""

import functools
import os

# AUTOTUNE is left out on purpose: a `from _configs import *` copy would not see set_autotune().
__all__ = [
    "autotuned_configs",
    "reset_kernel_configs",
    "set_autotune",
    "set_kernel_config",
]

_KERNELS = ("fwd", "dkdv", "dq", "decode")

#: On the GPU, autotune block sizes per (head dim, bucketed lengths, group, masks, dtype).
#: False: use the forced config (`set_kernel_config`) or the per-head-dim default.
AUTOTUNE = os.environ.get("MPT_TRITON_AUTOTUNE", "1") != "0"  # set_autotune() changes it
_FORCED: dict[str, dict[str, int]] = {}
# Under TRITON_INTERPRET=1 one small config (autotuning there wastes minutes); 16 x 16 blocks
# make the multi-block paths run at tiny sequence lengths.
_INTERPRET_CONFIG = {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1}


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _kernels():
    try:
        from . import _bwd, _decode, _fwd
    except ImportError as e:
        raise ImportError(
            "mpt.kernels needs Triton to run its attention kernels; install it with "
            "`pip install 'mpt[triton]'` or pick another attention implementation"
        ) from e
    return _fwd, _bwd, _decode


def set_autotune(enabled: bool) -> None:
    """Autotune on the GPU (the default), or use forced/default configs only (timing variants)."""
    global AUTOTUNE
    AUTOTUNE = bool(enabled)


def set_kernel_config(kernel: str, **config: int) -> None:
    """Force one launch config for `kernel` ("fwd", "dkdv", "dq" or "decode") instead of autotuning.

    Keys: block_m, block_n, num_warps, num_stages (decode also num_splits). For "dkdv", block_n is
    the key block of a program and block_m the query rows per step. Example:
    `set_kernel_config("fwd", block_m=128, block_n=64, num_warps=8, num_stages=3)`.
    """
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
    allowed = {"block_m", "block_n", "num_warps", "num_stages"} | (
        {"num_splits"} if kernel == "decode" else set()
    )
    bad = sorted(set(config) - allowed)
    if bad:
        raise ValueError(f"unknown config keys {bad} for {kernel!r}; allowed: {sorted(allowed)}")
    _FORCED[kernel] = dict(config)


def reset_kernel_configs() -> None:
    """Forget every forced config (back to autotuning on the GPU)."""
    _FORCED.clear()


def autotuned_configs(head_dim: int, q_len: int, k_len: int | None = None) -> dict[str, str]:
    """The launch configs Triton's autotuner has picked in this process for attention of this
    head dim and these lengths (k_len defaults to q_len), for benchmark records:
    {"<kernel> <tuning key>": config}. Empty where nothing was autotuned (under the interpreter,
    with autotuning off, or before the first call)."""
    block_d = _block_d(head_dim)
    shape = (head_dim, _bucket(q_len), _bucket(q_len if k_len is None else k_len))
    found = {}
    for kernel in ("fwd", "dkdv", "dq"):
        for key, cfg in getattr(_autotuned(kernel, block_d), "cache", {}).items():
            if tuple(key[:3]) == shape:
                found[f"{kernel} {key}"] = str(cfg)
    return found


def _default_config(kernel: str, block_d: int) -> dict[str, int]:
    """Configs the autotuner picked most often on an H200 (bf16, S = 2048 and 8192)."""
    small = block_d <= 64
    if kernel == "fwd":
        return {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3}
    if kernel == "dkdv":
        if small:
            return {"block_m": 32, "block_n": 128, "num_warps": 4, "num_stages": 3}
        return {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2}
    if kernel == "dq":
        if small:
            return {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3}
        return {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2}
    return {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2}


def _tune_space(kernel: str, block_d: int) -> list[tuple[int, int, int, int]]:
    """(block_m, block_n, num_warps, num_stages) candidates; pruned by head dim (registers)."""
    if kernel == "fwd":
        shapes = [(128, 64), (128, 128), (64, 64)] if block_d <= 64 else [(128, 64), (64, 64)]
        return [(m, n, w, s) for m, n in shapes for w in (4, 8) for s in (2, 3, 4)]
    if kernel == "dkdv":  # (query rows per step, keys per program)
        shapes = [(32, 128), (64, 128), (64, 64)] if block_d <= 64 else [(32, 64), (64, 64)]
        shapes += [(32, 128)] if block_d > 64 else []
        return [(m, n, w, s) for m, n in shapes for w in (4, 8) for s in (2, 3)]
    shapes = [(128, 64), (64, 64), (128, 32)] if block_d <= 64 else [(64, 64), (128, 32), (64, 32)]
    return [(m, n, w, s) for m, n in shapes for w in (4, 8) for s in (2, 3)]


@functools.cache
def _autotuned(kernel: str, block_d: int):
    import triton

    _fwd, _bwd, _ = _kernels()
    fn = {"fwd": _fwd.fwd_kernel, "dkdv": _bwd.dkdv_kernel, "dq": _bwd.dq_kernel}[kernel]
    configs = [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for m, n, w, s in _tune_space(kernel, block_d)
    ]
    key = ["HEAD_DIM", "TQ_BUCKET", "TK_BUCKET", "GROUP", "HAS_SEQ", "SKIP"]
    return triton.autotune(configs=configs, key=key)(fn)


def _fixed_config(kernel: str, block_d: int) -> dict[str, int] | None:
    """The config to launch with, or None to autotune."""
    if kernel in _FORCED:
        cfg = dict(_default_config(kernel, block_d))
        if _interpret():
            cfg.update(_INTERPRET_CONFIG)
        cfg.update(_FORCED[kernel])
        return cfg
    if _interpret():
        return dict(_INTERPRET_CONFIG)
    if not AUTOTUNE or kernel == "decode":
        return _default_config(kernel, block_d)
    return None


#: The autotuner's pick per launch (kernel, head-dim block, `key`, constexprs), as the keyword
#: arguments it launches with: later launches take it directly, without the autotuner's per-call
#: work (a key built from every argument, configs merged into dicts).
_PICKED: dict[tuple, dict] = {}


def _launch(
    kernel: str,
    fn,
    grid,
    args: tuple,
    consts: dict,
    block_d: int,
    key: tuple = (),
    tune: bool = True,
) -> dict[str, int]:
    """Launch `fn` with a fixed config, or with what its autotuned wrapper picks;
    `grid(block_m, block_n)`. `key`: what, beside `consts`, tells the autotuner's cases apart
    (the bucketed lengths, the tensors' dtypes). `tune=False` (inference calls): never start the
    autotuner; take its pick where this case was tuned already, else the default config."""
    cfg = _fixed_config(kernel, block_d)
    if cfg is None:
        picked = (kernel, block_d, key, *consts.items())
        launch = _PICKED.get(picked)
        if launch is not None:
            fn[grid(launch["BLOCK_M"], launch["BLOCK_N"])](*args, **consts, **launch)
            return {}
        if tune:
            tuned = _autotuned(kernel, block_d)
            tuned[lambda meta: grid(meta["BLOCK_M"], meta["BLOCK_N"])](*args, **consts)
            _PICKED[picked] = tuned.best_config.all_kwargs()
            return {}
        cfg = _default_config(kernel, block_d)
    blocks = {"BLOCK_M": cfg["block_m"], "BLOCK_N": cfg["block_n"]}
    launch = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    fn[grid(cfg["block_m"], cfg["block_n"])](*args, **consts, **blocks, **launch)
    return cfg


def _block_d(d: int) -> int:
    return max(16, 1 << (d - 1).bit_length())


def _bucket(t: int) -> int:
    return max(16, 1 << (max(t, 1) - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)
