"""The one table of GPU peak throughput that MFU is measured against.

MFU (model FLOPs utilization) follows llm-foundry: the model's FLOPs per token (forward and
backward, `flops_per_token(seq_len)`) times the tokens a device trains per second, over the
device's dense (no sparsity) bf16 tensor-core peak, whatever precision the run uses. A device
that is not in the table is an error naming it, never a guess: pass `peak_flops` to the
SpeedMonitor for hardware the table does not know.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GPU_PEAKS", "GpuPeak", "peak_flops_for"]


@dataclass(frozen=True, kw_only=True)
class GpuPeak:
    """A GPU family: how its `torch.cuda.get_device_name()` reads, and its dense bf16 peak.

    all_of:  every one of these (upper-case) must be in the device name.
    any_of:  at least one of these must be in it (empty: no such condition).
    none_of: none of these may be in it (keeps e.g. 'H100 NVL' from reading as an H100 SXM).
    """

    label: str
    bf16_flops: float
    all_of: tuple[str, ...]
    any_of: tuple[str, ...] = ()
    none_of: tuple[str, ...] = ()

    def matches(self, device_name: str) -> bool:
        name = device_name.upper()
        return (
            all(part in name for part in self.all_of)
            and (not self.any_of or any(part in name for part in self.any_of))
            and not any(part in name for part in self.none_of)
        )


# Dense bf16 peaks from NVIDIA's data sheets (the sparse figures are twice these).
# Device names as CUDA reports them: "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe",
# "NVIDIA H200", "NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe".
GPU_PEAKS: tuple[GpuPeak, ...] = (
    GpuPeak(label="H100 SXM", bf16_flops=989.5e12, all_of=("H100",), none_of=("PCIE", "NVL")),
    GpuPeak(label="H100 PCIe", bf16_flops=756e12, all_of=("H100", "PCIE")),
    GpuPeak(label="H200", bf16_flops=989.5e12, all_of=("H200",), none_of=("NVL", "GH200")),
    GpuPeak(label="A100 40GB", bf16_flops=312e12, all_of=("A100", "40GB")),
    GpuPeak(label="A100 80GB", bf16_flops=312e12, all_of=("A100", "80GB")),
)


def peak_flops_for(device_name: str) -> float:
    """The dense bf16 peak (FLOP/s) of the GPU called `device_name`; raise if it is unknown."""
    found = [peak for peak in GPU_PEAKS if peak.matches(device_name)]
    if len(found) != 1:
        known = ", ".join(peak.label for peak in GPU_PEAKS)
        problem = "is not in" if not found else "matches more than one entry of"
        raise ValueError(
            f"GPU {device_name!r} {problem} the peak-FLOPs table (known: {known}); MFU needs "
            "the device's dense bf16 peak: pass SpeedMonitor(peak_flops=...) for this device"
        )
    return found[0].bf16_flops
