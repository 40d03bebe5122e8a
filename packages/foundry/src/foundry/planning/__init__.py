"""The arithmetic behind `foundry plan`: pure functions, each stating its formula and source.

- `memory`: bytes per GPU of one training step (weights, gradients, optimizer state, weight
  copies, activations, short-lived buffers) and the largest micro-batch that fits.
- `throughput`: tokens/s per GPU from an MFU figure and a model of FSDP2's all-gathers and
  reduce-scatters over the hardware's links; days and cost for a token budget.
- `measured`: the MFU and peak-memory figures of our own runs (tools/bench/RESULTS.md).
- `announcement`: the rows of MosaicML's published cost tables and what each implies.

`foundry.plan` puts them together for a config (`plan_for_train`, the `foundry plan` command).
"""

__all__: list[str] = []  # the modules are the API: foundry.planning.memory, ...
