"""Can two ranks form an NCCL group on the GPUs this machine has? (hybrid mode's GPU path)

    python scripts/nccl_probe.py

Two processes, ranks 0 and 1, each on GPU ``rank % torch.cuda.device_count()``, build an
NCCL process group through a FileStore and all-reduce one tensor; prints what happened.
With one GPU both ranks share it, which NCCL refuses ("Duplicate GPU detected"): NCCL
groups need a GPU per member.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import sys
import tempfile
import traceback

import torch
import torch.distributed as dist


def _rank(rank: int, path: str, out: mp.Queue) -> None:
    try:
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        store = dist.FileStore(path, 2)
        dist.init_process_group(
            "nccl",
            store=store,
            rank=rank,
            world_size=2,
            timeout=datetime.timedelta(seconds=60),
            device_id=device,
        )
        tensor = torch.full((4,), float(rank + 1), device=device)
        dist.all_reduce(tensor)
        torch.cuda.synchronize(device)
        out.put((rank, f"ok on {device}: {tensor.tolist()}"))
        dist.destroy_process_group()
    except Exception as e:  # report it, whatever it is
        out.put((rank, f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}"))


def main() -> int:
    print(
        f"torch {torch.__version__}, {torch.cuda.device_count()} GPU(s), "
        f"NCCL {torch.cuda.nccl.version() if torch.cuda.is_available() else '-'}"
    )
    context = mp.get_context("spawn")
    out = context.Queue()
    path = tempfile.mktemp(prefix="nccl-probe-")
    ranks = [context.Process(target=_rank, args=(r, path, out)) for r in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=120)
        if process.is_alive():
            process.kill()
            print(f"rank process {process.pid} hung (killed after 120 s)")
    while not out.empty():
        rank, what = out.get()
        print(f"rank {rank}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
