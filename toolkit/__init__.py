"""toolkit: adapter fine-tuning of pretrained encoders for sentence-pair regression.

Nothing is fetched from a model hub at run time: the offline switch is set before any Hugging Face
library is imported, and every load passes ``local_files_only`` as well.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

__version__ = "0.1.0"
