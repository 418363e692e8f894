"""Robustness under distribution shift: WiSE-FT, the interpolation between the pre-trained and the
fine-tuned weights, swept, measured on in- and out-of-distribution sets and chosen on dev (wise), and
a shift benchmark cut from STS-B's genres: train on two, test on the third (genre_shift)."""
