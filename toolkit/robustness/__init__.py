"""Robustness under distribution shift: WiSE-FT, the interpolation between the pre-trained and the
fine-tuned weights, swept, measured on in- and out-of-distribution sets and chosen on dev (wise)."""
