"""Put on PYTHONPATH by test_score_ray.py: makes importing ray fail, as on a machine without the extra."""
import sys


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ray":
            raise ImportError(f"No module named {name!r} (blocked in this test)")
        return None


sys.meta_path.insert(0, _Blocked())
