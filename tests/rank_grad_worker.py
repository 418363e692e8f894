"""Started by ``accelerate launch`` from test_distributed.py, once per process: the gradient of a
rank loss's optimiser step under DDP (this process's slice of each global micro-batch, the similarities
gathered, the loop's loss scaling), beside the one-process gradient of the same step, for the test to
compare. Adam is nearly blind to a constant factor on the gradient, so training runs alone cannot
show that the scaling is right; the gradient itself can."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from toolkit.model.losses import batch_objective
from toolkit.training.distributed import gather_with_grad, make_accelerator

PER_DEVICE, ACCUMULATION, FEATURES = 8, 2, 6


def micro_batches(counted: list[int], generator: torch.Generator) -> list[tuple[torch.Tensor, ...]]:
    """One optimiser step's global micro-batches as the sampler makes them: ``counted`` real pairs
    each (weight 1 / the step's pairs), the rest of the slots repeats of them at weight 0."""
    weight = 1.0 / sum(counted)
    out = []
    for n in counted:
        x = torch.randn(n, FEATURES, generator=generator, dtype=torch.float64)
        y = torch.randint(0, 6, (n,), generator=generator).double()  # ties included
        fill = [k % n for k in range(PER_DEVICE * 2 - n)]
        w = torch.tensor([weight] * n + [0.0] * len(fill), dtype=torch.float64)
        out.append((torch.cat((x, x[fill])), torch.cat((y, y[fill])), w))
    return out


def similarity(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A bounded score, as a cosine is; the tanh also gives the bias a gradient (a rank loss is blind
    to a shift of all scores)."""
    return torch.tanh(model(x)).squeeze(-1)


def main() -> None:
    spec = json.loads(sys.argv[1])
    acc = make_accelerator("no", ACCUMULATION)
    assert acc.num_processes == 2
    rank, scale = acc.process_index, float(acc.num_processes * ACCUMULATION)  # Session.loss_scale's factor
    torch.manual_seed(0)
    reference = torch.nn.Linear(FEATURES, 1, dtype=torch.float64)
    model = torch.nn.Linear(FEATURES, 1, dtype=torch.float64)
    model.load_state_dict(reference.state_dict())
    model = acc.prepare(model)
    generator = torch.Generator().manual_seed(1)
    # step 1: a last micro-batch of 3 pairs (rank 1's slice all filler); step 2: 11 (rank 1 holds 3)
    steps = [micro_batches(counted, generator) for counted in ([16, 3], [16, 11])]
    report = {}
    for loss in spec["losses"]:
        for number, step in enumerate(steps):
            model.zero_grad()
            reference.zero_grad()
            for x, y, w in step:
                with acc.accumulate(model):
                    mine = slice(rank * PER_DEVICE, (rank + 1) * PER_DEVICE)
                    objective, _ = batch_objective(loss, similarity(model, x[mine]), y[mine], w[mine],
                                                   gather_with_grad)
                    acc.backward(objective * scale)
                alone, _ = batch_objective(loss, similarity(reference, x), y, w)  # one process, the whole batch
                alone.backward()
            assert acc.sync_gradients
            report[f"{loss}-{number}"] = {
                "ddp": [p.grad.flatten().tolist() for p in model.parameters()],
                "alone": [p.grad.flatten().tolist() for p in reference.parameters()]}
    Path(spec["reports"], f"grad{rank}.json").write_text(json.dumps(report))
    # every report is written: leave without the interpreter's teardown, where a thread torch left up
    # aborts the process now and then on a loaded machine ("terminate called without an active
    # exception", exit -6), with or without destroy_process_group first
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
