"""Context parallel: a sequence sharded across ranks rotates each shard with its *global*
positions (contiguous shards: an offset; load-balanced "zigzag" shards: explicit positions), and
the gathered result equals the unsharded rotation bit for bit.  Two gloo processes on the CPU."""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ropekit as rk

WORLD, S = 2, 12


def _full():
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, S, 4, 32, generator=g).bfloat16()
    k = torch.randn(2, S, 2, 32, generator=g).bfloat16()
    return q, k


def _zigzag_chunks(rank: int) -> list[int]:
    # 2 * WORLD chunks; rank r holds chunks r and 2 * WORLD - 1 - r (balances causal attention work)
    return [rank, 2 * WORLD - 1 - rank]


def _worker(rank: int, init_file: str) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        # the reference and the triton kernel (interpreted on the CPU here) in the same processes
        for backend in ("reference", "triton"):
            _check_shards(rank, backend)
    finally:
        dist.destroy_process_group()


def _check_shards(rank: int, backend: str) -> None:
    spec = rk.RopeSpec(head_dim=32, rotary_dim=24, base=500000.0)
    cos, sin = rk.cos_sin(spec, S)
    q, k = _full()
    want_q, want_k = rk.apply_rope_qk(q, k, cos, sin, backend=backend)

    # contiguous shards: shard r starts at global position r * S / WORLD
    n = S // WORLD
    sq, sk = q[:, rank * n : (rank + 1) * n], k[:, rank * n : (rank + 1) * n]
    yq, yk = rk.apply_rope_qk(sq, sk, cos, sin, offsets=rank * n, backend=backend)
    for mine, want in ((yq, want_q), (yk, want_k)):
        parts = [torch.empty_like(mine) for _ in range(WORLD)]
        dist.all_gather(parts, mine.contiguous())
        assert torch.equal(torch.cat(parts, 1), want), "contiguous shards differ from the unsharded rotation"

    # zigzag shards: non-contiguous global positions, passed explicitly
    c = S // (2 * WORLD)
    idx = torch.cat([torch.arange(j * c, (j + 1) * c) for j in _zigzag_chunks(rank)])
    zq, zk = rk.apply_rope_qk(q[:, idx], k[:, idx], cos, sin, positions=idx, backend=backend)
    for mine, want in ((zq, want_q), (zk, want_k)):
        parts = [torch.empty_like(mine) for _ in range(WORLD)]
        dist.all_gather(parts, mine.contiguous())
        out = torch.empty_like(want)
        for r, part in enumerate(parts):
            ridx = torch.cat([torch.arange(j * c, (j + 1) * c) for j in _zigzag_chunks(r)])
            out[:, ridx] = part
        assert torch.equal(out, want), "zigzag shards differ from the unsharded rotation"
    # the shards really were different work: a shard rotated from position 0 would not match
    wrong = rk.apply_rope_qk(sq, sk, cos, sin, backend=backend)[0]
    assert rank == 0 or not torch.equal(wrong, yq)


def test_sharded_sequence_equals_unsharded(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"),), nprocs=WORLD, join=True)
