"""Triton kernels paired with their autograd functions and modules (the fused adapter bottleneck)."""
