"""Writes tests/corpus/hf_dataset/ with the real ``datasets`` library (4.4.1, in a throwaway venv:
it is not a dependency of the toolkit), so that the reader is tested on folders ``datasets`` wrote:

    python3 -m venv /tmp/ds && /tmp/ds/bin/pip install datasets==4.4.1
    /tmp/ds/bin/python tests/corpus/make_hf_dataset.py

pairs/      one Dataset, 40 rows in 3 Arrow files, three of them bad (empty sentence, no score,
            score outside 0..5); pairs.jsonl holds the same rows, the reference the test reads.
dict/       a DatasetDict (train, test): the root is refused with the splits named.
"""
import json
import shutil
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent / "hf_dataset"
rows = [{"pair_id": f"p{i:02d}", "sentence1": f"A man plays instrument {i}.", "sentence2": f"Someone plays {i}.",
         "score": round(i * 0.125, 3)} for i in range(40)]
rows[6]["sentence1"] = ""
rows[19]["score"] = None
rows[32]["score"] = 7.0
shutil.rmtree(HERE, ignore_errors=True)
HERE.mkdir()
ds = datasets.Dataset.from_list(rows)
ds.save_to_disk(str(HERE / "pairs"), num_shards=3)
datasets.DatasetDict({"train": ds.select(range(30)), "test": ds.select(range(30, 40))}).save_to_disk(str(HERE / "dict"))
(HERE / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
