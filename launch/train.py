"""``accelerate launch launch/train.py ...``: the arguments and the training function of ``toolkit train``."""
import sys

from toolkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
