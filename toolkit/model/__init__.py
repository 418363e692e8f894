"""The pair regressor and what it is built from: the pretrained encoder brought in safely from a local
folder (safe_loading) or found by a short name (known_models), the adapter and the head as a cross-
or bi-encoder (regressor), the training objectives (losses), the score scale the model learns on
(label_scale), and tokenised, padded, length-grouped batches (batching)."""
