"""Memory per GPU of one training step of an MPT, counted from its shapes and the trainer's recipe.

    weights, gradients, optimizer state     sharded over the FSDP2 shard group
    weight copies                           autocast's bf16 copy of each fp32 weight
    gathered                                FSDP2's unsharded embedding and blocks
    activations                             saved for backward by every block
    transient                               the largest short-lived buffer
    peak = weights + optimizer + gradients + the last four, with gradient accumulation;
           weights + optimizer + max(gradients, the last four), with one micro-batch a step

Sources. Bytes per parameter follow ZeRO (Rajbhandari et al. 2020, section 3.1: 16 bytes per
parameter for mixed-precision Adam, K = 12 of them optimizer state). Activations follow
"Reducing Activation Recomputation in Large Transformer Models" (Korthikanti et al. 2022,
section 4.1): a block saves 34·s·b·h bytes plus 5·a·s²·b for the attention scores, with 16-bit
activations. Counted here tensor by tensor for `mpt.MPTBlock`: no dropout masks (MPT trains
without dropout, -2·sbh; masks are not counted) and attention kernels that keep no s×s scores,
so a block saves s·b·(5·d + qkv + 2·ffn) activation elements, 32·s·b·h bytes in bf16 for MPT's
4x MLP, plus each attention row's log-sum-exp and each LayerNorm's mean and rstd in fp32. The
reference `torch` backend also keeps the fp32 scores and the probabilities (B·H·T² each).

All figures are bytes (`GIB` converts); nothing here allocates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mpt.config import MPTConfig

__all__ = [
    "ATTENTION_MEMORY",
    "GIB",
    "LOSSES",
    "OPTIMIZER_STATE_BYTES",
    "PRECISIONS",
    "LOSS_CHUNK",
    "Memory",
    "Precision",
    "Setup",
    "activation_bytes_per_block",
    "largest_micro_batch",
    "memory_per_gpu",
]

GIB = 2**30
LOSS_CHUNK = 4096  # tokens per chunk of mpt.loss.chunked_lm_head_loss (its default)


@dataclass(frozen=True, kw_only=True)
class Precision:
    """How the trainer stores the weights and in which dtype it computes (bytes per element)."""

    name: str
    summary: str
    weight_bytes: int  # each stored (sharded) weight
    grad_bytes: int  # each stored (sharded) gradient
    master_bytes: int  # an fp32 master copy kept by the optimizer (MasterWeightAdamW)
    act_bytes: int  # activations: the compute dtype
    residual_bytes: int  # the residual stream between blocks (all that checkpointing keeps)
    weight_copies: bool  # autocast's compute-dtype copy of each matmul weight, saved for backward
    gather_bytes: int  # each parameter as FSDP2 all-gathers it (its unsharded dtype)


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision(
            name="fp32",
            summary="fp32 weights, gradients and activations",
            weight_bytes=4,
            grad_bytes=4,
            master_bytes=0,
            act_bytes=4,
            residual_bytes=4,
            weight_copies=False,
            gather_bytes=4,
        ),
        # foundry train's default on GPUs: fp32 weights, forward under torch.autocast(bf16).
        # Autocast casts each weight in every forward and the matmul saves that bf16 copy for
        # backward; under FSDP2 (param_dtype null) the copies outlive the resharding, so a bf16
        # copy of every block's weights stays on each GPU from forward to backward.
        Precision(
            name="amp_bf16",
            summary="fp32 weights, bf16 autocast (bf16 weight copies kept for backward)",
            weight_bytes=4,
            grad_bytes=4,
            master_bytes=0,
            act_bytes=2,
            residual_bytes=4,
            weight_copies=True,
            gather_bytes=4,
        ),
        # FSDP2 with param_dtype=bf16: fp32 shards, bf16 all-gathers, fp32 reduce-scatters
        # (composer_lite.ParallelConfig's reduce_dtype default), fp32 sharded gradients.
        Precision(
            name="fsdp_bf16",
            summary="fp32 shards, FSDP2 param_dtype=bf16 (bf16 all-gathers and activations)",
            weight_bytes=4,
            grad_bytes=4,
            master_bytes=0,
            act_bytes=2,
            residual_bytes=2,
            weight_copies=False,
            gather_bytes=2,
        ),
        # tools/bench's `mp-*` modes: bf16 weights and gradients, fp32 masters and moments in
        # composer_lite.optim.MasterWeightAdamW (the single-GPU form of fsdp_bf16).
        Precision(
            name="bf16_master",
            summary="bf16 weights and gradients, fp32 masters (MasterWeightAdamW)",
            weight_bytes=2,
            grad_bytes=2,
            master_bytes=4,
            act_bytes=2,
            residual_bytes=2,
            weight_copies=False,
            gather_bytes=2,
        ),
    )
}

# fp32 optimizer state per parameter: Adam's two moments; Lion's one.
OPTIMIZER_STATE_BYTES: dict[str, int] = {"adamw": 8, "decoupled_adamw": 8, "lion": 4}

# What an attention backend keeps for backward beyond q, k, v and the output:
# "rows": each query row's fp32 log-sum-exp (FlashAttention-style kernels);
# "rows+bias": the same plus one shared (1, H, T, T) ALiBi bias for all blocks (SDPA);
# "scores": the fp32 softmax and the probabilities for every block (the reference math).
ATTENTION_MEMORY: dict[str, str] = {
    "triton": "rows",
    "flash": "rows",
    "flex": "rows",
    "sdpa": "rows+bias",
    "torch": "scores",
}


def _chunked_loss(model: MPTConfig, tokens: int, p: Precision) -> tuple[int, int]:
    """(saved, forward transient) of `mpt.loss.chunked_lm_head_loss`: it saves the gradients of
    the hidden states (compute dtype) and of the head's weight (fp32) in forward; per chunk of
    `LOSS_CHUNK` tokens it makes fp32 logits, their fp32 softmax and a compute-dtype gradient,
    and it casts the head's weight to the compute dtype once."""
    d, v, a = model.d_model, model.vocab_size, p.act_bytes
    saved = tokens * d * a + v * d * 4
    chunk = min(LOSS_CHUNK, tokens)
    cast = v * d * a if a != p.gather_bytes else 0  # the weight as the model sees it
    return saved, chunk * v * (4 + 4 + (a if a != 4 else 0)) + cast


def _compiled_logits_loss(model: MPTConfig, tokens: int, p: Precision) -> tuple[int, int]:
    """(saved, transient) of the full-logits loss inside a whole-model `torch.compile` (the
    bench's `compile-model` modes): inductor's fused cross-entropy keeps the compute-dtype logits
    and makes their fp32 gradient at the start of backward: 6 bytes a logit in bf16 (with the
    three H100 rows of tools/bench/RESULTS.md to within 1%)."""
    logits = tokens * model.vocab_size
    return logits * p.act_bytes, logits * 4


# loss name -> (model, tokens, precision) -> (saved for backward, transient) bytes
LOSSES: dict[str, Callable[[MPTConfig, int, Precision], tuple[int, int]]] = {
    "chunked": _chunked_loss,
    "logits_compiled": _compiled_logits_loss,
}


@dataclass(frozen=True, kw_only=True)
class Setup:
    """How a run holds the model: what the memory and communication arithmetic depends on."""

    precision: str  # a key of PRECISIONS
    optimizer: str  # a key of OPTIMIZER_STATE_BYTES
    attention: str  # an attention backend (a key of ATTENTION_MEMORY)
    loss: str = "chunked"  # a key of LOSSES
    shard_ranks: int = 1  # ranks one copy of the state is sharded over (1: not sharded)
    replicas: int = 1  # copies of the state (HSDP groups, or data-parallel ranks without FSDP)
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        for key, value, table in (
            ("precision", self.precision, PRECISIONS),
            ("optimizer", self.optimizer, OPTIMIZER_STATE_BYTES),
            ("attention", self.attention, ATTENTION_MEMORY),
            ("loss", self.loss, LOSSES),
        ):
            if value not in table:
                raise ValueError(f"Setup.{key}: expected one of {sorted(table)}, got {value!r}")
        if self.shard_ranks < 1 or self.replicas < 1:
            raise ValueError(
                f"Setup.shard_ranks and Setup.replicas: expected >= 1, got {self.shard_ranks}"
                f" and {self.replicas}"
            )

    @property
    def world(self) -> int:
        return self.shard_ranks * self.replicas


@dataclass(frozen=True, kw_only=True)
class Memory:
    """Bytes per GPU of one training step, by what holds them."""

    weights: int
    gradients: int
    optimizer: int  # optimizer state, fp32 masters included
    copies: int  # autocast's weight copies
    gathered: int  # FSDP2's unsharded embedding and blocks (and the blocks' unsharded grads)
    activations: int  # saved for backward
    transient: int  # the largest short-lived buffer (loss chunks, a block's backward)
    accumulating: bool  # gradients held from an earlier micro-batch of the same step

    @property
    def total(self) -> int:
        """The peak: with gradient accumulation everything at once; without, the gradients
        replace the forward's buffers (which backward frees as it makes them)."""
        forward = self.copies + self.gathered + self.activations + self.transient
        if self.accumulating:
            return self.weights + self.optimizer + self.gradients + forward
        return self.weights + self.optimizer + max(self.gradients, forward)


def _params(model: MPTConfig) -> tuple[int, int, int]:
    """(all parameters, parameters of one block, parameters outside the blocks)."""
    total = model.num_params()
    final_norm = model.d_model * (1 if model.no_bias else 2)
    per_block = (model.num_params(include_embedding=False) - final_norm) // model.n_layers
    return total, per_block, total - per_block * model.n_layers


def activation_bytes_per_block(
    model: MPTConfig, *, micro_batch: int, seq_len: int, precision: Precision, attention: str
) -> int:
    """Bytes one `MPTBlock` saves for backward at `micro_batch` x `seq_len` tokens.

    n = B·T tokens, a = bytes of an activation, H heads, f the MLP width:
        n·a·(d [norm_1 input] + d [Wqkv input] + qkv [q, k, v] + d [attention output]
             + d [norm_2 input] + d [up_proj input] + f [GELU input] + f [down_proj input])
      + n·4·H [log-sum-exp per row] + n·16 [mean and rstd of two LayerNorms, fp32]
      + B·H·T²·(4 + a) with the reference `torch` attention: its fp32 softmax (kept by
        nan_to_num) and the probabilities the value product keeps (a new tensor, even in fp32).
    With bf16 and f = 4d, qkv = 3d: 32·n·d bytes, Korthikanti et al.'s 34·sbh without dropout.
    """
    n, a = micro_batch * seq_len, precision.act_bytes
    d, f, heads = model.d_model, model.ffn_hidden_size, model.n_heads
    saved = n * a * (5 * d + model.qkv_size + 2 * f) + n * 4 * heads + n * 16
    if ATTENTION_MEMORY[attention] == "scores":
        saved += micro_batch * heads * seq_len * seq_len * (4 + a)
    return saved


def memory_per_gpu(
    model: MPTConfig, setup: Setup, *, micro_batch: int, seq_len: int, accumulating: bool = True
) -> Memory:
    """Bytes per GPU of a training step at `micro_batch` sequences of `seq_len` tokens.

    Sharded over S = setup.shard_ranks (FSDP2 shards every parameter, its gradient and its
    optimizer state), with P parameters in all, P_b in a block, P_e outside the blocks:
        weights, gradients, optimizer = P·bytes / S
        copies     = L·P_b·a when autocast keeps compute-dtype weight copies (amp_bf16)
        gathered   = (P_e + 2·P_b)·g when S > 1: the root's unsharded embedding stays gathered
                     from forward to the end of backward, and a block runs while the next one is
                     prefetched (g: bytes of the all-gathered dtype)
        activations = L·(block activations), or with activation checkpointing L·n·d·r (each
                     block's input, r the residual stream's bytes); plus the final norm's input,
                     the loss's saved tensors, the ALiBi bias of SDPA, and the input ids
        transient  = the larger of the loss's forward buffers and a block's backward: the
                     gradients of the MLP's input and output of GELU (2·n·ffn·a, alive together),
                     its recomputed activations under checkpointing, its weights' new gradients:
                     under FSDP2 all of the block's, unsharded (g bytes, then an fp32 copy for the
                     reduce-scatter); unsharded, the largest weight's before it is accumulated
    The peak (`Memory.total`) is weights + optimizer + gradients + the rest when `accumulating`
    (several micro-batches per step: the gradients live through the next forward), else
    weights + optimizer + max(gradients, the rest): backward frees the activations, the weight
    copies and the gathered blocks as it makes the gradients.
    """
    if micro_batch < 1 or seq_len < 1:
        raise ValueError(f"micro_batch and seq_len: expected >= 1, got {micro_batch} and {seq_len}")
    p = PRECISIONS[setup.precision]
    total, per_block, outside = _params(model)
    shards = setup.shard_ranks
    n, d, layers = micro_batch * seq_len, model.d_model, model.n_layers

    def sharded(count: int, nbytes: int) -> int:
        return -(-count * nbytes // shards)  # ceil: a rank holds at least its share

    opt_bytes = OPTIMIZER_STATE_BYTES[setup.optimizer] + p.master_bytes
    block = activation_bytes_per_block(
        model, micro_batch=micro_batch, seq_len=seq_len, precision=p, attention=setup.attention
    )
    if setup.activation_checkpointing:
        blocks_saved, recompute = layers * n * d * p.residual_bytes, block
    else:
        blocks_saved, recompute = layers * block, 0
    loss_saved, loss_transient = LOSSES[setup.loss](model, n, p)
    extra = n * d * p.act_bytes + n * 8 + n * 8  # final norm's input, input ids and labels
    if ATTENTION_MEMORY[setup.attention] == "rows+bias":
        heads = model.n_heads
        extra += heads * seq_len * seq_len * (4 + (p.act_bytes if p.act_bytes != 4 else 0))
    if shards > 1:  # the block's unsharded gradients, and their fp32 copy to reduce-scatter
        grads = per_block * (p.gather_bytes + (4 if p.gather_bytes != 4 else 0))
    else:  # a weight's new gradient before it is added to the one accumulated so far
        grads = d * max(model.ffn_hidden_size, model.qkv_size) * p.grad_bytes
    backward = recompute + 2 * n * model.ffn_hidden_size * p.act_bytes + grads
    return Memory(
        weights=sharded(total, p.weight_bytes),
        gradients=sharded(total, p.grad_bytes),
        optimizer=sharded(total, opt_bytes),
        copies=layers * per_block * p.act_bytes if p.weight_copies else 0,
        gathered=(outside + 2 * per_block) * p.gather_bytes if shards > 1 else 0,
        activations=blocks_saved + loss_saved + extra,
        transient=max(loss_transient, backward),
        accumulating=accumulating,
    )


def largest_micro_batch(
    model: MPTConfig,
    setup: Setup,
    *,
    seq_len: int,
    budget_bytes: float,
    per_gpu_batch: int | None = None,
    limit: int = 4096,
) -> int:
    """The largest micro-batch (sequences, at most `per_gpu_batch`, the sequences each GPU takes
    per optimizer step, when known) whose `memory_per_gpu` fits `budget_bytes`; 0 when not even
    one fits. A micro-batch below `per_gpu_batch` (or any, when it is unknown) accumulates
    gradients. Memory grows with the micro-batch, so a binary search."""

    def fits(mb: int) -> bool:
        accumulating = per_gpu_batch is None or mb < per_gpu_batch
        memory = memory_per_gpu(
            model, setup, micro_batch=mb, seq_len=seq_len, accumulating=accumulating
        )
        return memory.total <= budget_bytes

    high = min(limit, per_gpu_batch or limit)
    if not fits(1):
        return 0
    if per_gpu_batch is not None and fits(high):  # one micro-batch per step: no gradients held
        return high
    low = 1
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low
