"""asv benchmarks of shtopk: forward, forward+backward, device time, GPU memory and nCCS."""
