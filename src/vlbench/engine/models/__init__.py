"""The models of one process, in three modules: loading.py (Models: each part loaded lazily and once, from a hub id
or a local directory, as a user would; compile, fp8, --fast, the warm-up), placement.py (the offload policies: where
each part lives, moves between the device and host memory, offload group's streamed DiT) and devices.py (what the
card and this torch build can do: the settings' checks, the memory cap, the CPU-fallback warning, kernel timing).

`from vlbench.engine.models import Models` (and the names below) still works: this package re-exports them.
"""

from vlbench.engine.models.devices import (ATTENTION_DIFFUSERS, ATTENTION_ON_CPU, FAST_ATTENTION_CANDIDATES,
                                           FP8_MIN_CAPABILITY, cap_gpu_memory, check_settings, cpu_fallback_warning,
                                           cuda_problem, startup_warning, time_attention)
from vlbench.engine.models.loading import (CAPTION_PAD, COMPILE_OPTIONS, FAST_COMPILE_OPTIONS, FAST_RECOMPILE_LIMIT,
                                           FP8_ACTIVATION_LB, TORCH_DTYPES, Models, VLModel, _check_not_file,
                                           _load_error, compiled_graphs)
from vlbench.engine.models.placement import (DIT_BLOCK_LISTS, GROUP_ACTIVATION_RESERVE, GROUP_STREAM_SLOTS, Placement,
                                             _dit_blocks, _module_tensors, _non_block_modules, plan_group)

__all__ = ["ATTENTION_DIFFUSERS", "ATTENTION_ON_CPU", "FAST_ATTENTION_CANDIDATES", "FP8_MIN_CAPABILITY",
           "cap_gpu_memory", "check_settings", "cpu_fallback_warning", "cuda_problem", "startup_warning",
           "time_attention", "CAPTION_PAD", "COMPILE_OPTIONS", "FAST_COMPILE_OPTIONS", "FAST_RECOMPILE_LIMIT",
           "FP8_ACTIVATION_LB", "TORCH_DTYPES", "Models", "VLModel", "compiled_graphs", "DIT_BLOCK_LISTS",
           "GROUP_ACTIVATION_RESERVE", "GROUP_STREAM_SLOTS", "Placement", "plan_group"]
