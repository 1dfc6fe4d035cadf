"""One PyTorch DistributedDataParallel step with the gloo backend, one process per rank.

tpi-jupyter sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE and RANK on every rank, so the default
`env://` rendezvous needs no argument. After the step, every rank checks that the gradients were
averaged across ranks (each rank saw different data) and that the weights agree everywhere.
"""

import os
import socket
import sys
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # numpy is not needed here
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)  # the same initial weights on every rank
model = DistributedDataParallel(torch.nn.Linear(4, 1, bias=False))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
inputs = torch.full((2, 4), float(rank + 1))  # different data on each rank
model(inputs).sum().backward()
optimizer.step()
# Every rank's gradient is the mean over ranks of 2 * (rank + 1): (world + 1) on every element.
expected = torch.full((1, 4), float(world + 1))
gradient_ok = torch.allclose(model.module.weight.grad, expected)
weights = model.module.weight.detach().clone()
gathered = [torch.zeros_like(weights) for _ in range(world)]
dist.all_gather(gathered, weights)
same = all(torch.equal(weights, other) for other in gathered)
master = os.environ["MASTER_ADDR"]
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # which address reaches rank 0
    probe.connect((master, 9))  # a UDP connect sends nothing: it only picks the route
    address = probe.getsockname()[0]
print(
    f"ddp rank {rank} of {world} at {address} (master {master}): "
    f"gradient {'ok' if gradient_ok else 'WRONG'}, weights {'agree' if same else 'DIFFER'}"
)
dist.destroy_process_group()
# Leave without the interpreter's finalization: gloo's threads may still be ending then, and
# torch 2.x aborts now and then at exit ("terminate called without an active exception").
sys.stdout.flush()
os._exit(0 if gradient_ok and same else 1)
