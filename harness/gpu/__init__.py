"""GPU memory: NVML sampling on real GPUs and a file-backed registry for simulated ones."""
