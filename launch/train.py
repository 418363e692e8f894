"""``accelerate launch launch/train.py ...``: the arguments and the training function of ``toolkit train``."""
import sys

from toolkit.cli import main


def _leave_the_world() -> None:
    """Every process leaves the process group before it exits: one that exits with gloo's threads
    still up can abort (SIGABRT, "terminate called without an active exception") under load."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    status = main(["train", *sys.argv[1:]])
    _leave_the_world()
    sys.exit(status)
