"""Put on PYTHONPATH by test_export.py: makes importing torch (and what needs it) fail, so a bundle
that still works proves the runtime needs only onnxruntime, tokenizers and numpy."""
import sys


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "adapters", "accelerate", "deepspeed", "triton"):
            raise ImportError(f"{name} is blocked in this test (the bundle runtime must not need it)")
        return None


sys.meta_path.insert(0, _Blocked())
