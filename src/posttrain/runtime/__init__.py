"""The runtime seam below the trainers: devices, dtypes, ranks (see ../shared/DESIGN.md, "The runtime seam").

- `posttrain.runtime.device`: `Runtime`, `init_runtime` (the only code touching torch.distributed / CUDA),
  collectives that are no-ops alone, sharding, RNG state.
- `posttrain.runtime.parallel`: placing a model (device, fp32 head under bf16, DDP or FSDP2), gradient
  sync across micro-batches, full state dicts for rank-0 checkpoints.
- `posttrain.runtime.support`: which stages run on which runtime settings (torch-free; the CLI checks it).

This package file imports nothing, so `posttrain.runtime.support` stays cheap to import.
"""
