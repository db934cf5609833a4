"""Benchmark: training steps/s of difflab's Trainer against a plain PyTorch loop, same MLP, batch, optimizer.

Both loops train the same eps-target MLP on the z-scored 8-mode mixture with the trig VP process, Adam and
the same batch. difflab's loop additionally keeps an EMA, clips gradients, draws common random numbers per
step and bins the loss by time; the target is a ratio >= 0.9. Wall-clock figures depend on what else the
machine runs; steps per CPU-second (process time) do not, so the ratio is reported for both, from medians of
runs in ABBA order. Achieved GFLOP (3 x forward matmul FLOPs per step) per CPU-second is compared with a
measured float32 matmul peak on this machine. Prints its figures; nothing is asserted.

    python benchmarks/train_2d.py [--hidden 256] [--layers 4] [--batch 1024] [--steps 300] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from difflab.data.toy2d import make_toy2d
from difflab.experiments.toy2d.config import TrainConfig
from difflab.experiments.training.trainer import Trainer
from difflab.models.mlp import MLP
from difflab.objectives import build_objective
from difflab.parameterization import TargetDenoiser
from difflab.processes import TrigVP


def matmul_peak(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def mlp_flops_per_step(net: MLP, batch: int) -> float:
    macs = sum(m.in_features * m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear))
    return 3 * 2 * macs * batch  # forward + backward (2x forward)


def plain_loop(x: torch.Tensor, args: argparse.Namespace) -> tuple[float, float]:
    torch.manual_seed(0)
    net = MLP(2, args.hidden, args.layers)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    n = x.shape[0]
    start = cpu_start = 0.0
    for step in range(args.steps + args.warmup):
        if step == args.warmup:
            start, cpu_start = time.perf_counter(), time.process_time()
        idx = torch.randint(0, n, (args.batch,))
        x0 = x[idx]
        t = torch.rand(args.batch, dtype=torch.float64) * (1 - 2e-4) + 1e-4
        eps = torch.randn_like(x0)
        alpha = torch.cos(0.5 * torch.pi * t).float()[:, None]
        sigma = torch.sin(0.5 * torch.pi * t).float()[:, None]
        loss = ((net(alpha * x0 + sigma * eps, t.float()) - eps) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return args.steps / (time.perf_counter() - start), args.steps / (time.process_time() - cpu_start)


def difflab_loop(x: torch.Tensor, args: argparse.Namespace) -> tuple[float, float]:
    torch.manual_seed(0)
    process = TrigVP()
    net = MLP(2, args.hidden, args.layers)
    denoiser = TargetDenoiser(net, process, "eps")
    objective = build_objective(process, target="eps", weighting="eps_simple")
    cfg = TrainConfig(
        steps=args.steps + args.warmup,
        batch_size=args.batch,
        lr=1e-3,
        warmup=0,
        lr_schedule="constant",
        checkpoint_every=0,
        log_every=args.warmup,
        grad_clip=1.0,
    )
    trainer = Trainer(denoiser, objective, x, cfg, args.steps + args.warmup)
    trainer.train(until=args.warmup)
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    return args.steps / (time.perf_counter() - start), args.steps / (time.process_time() - cpu_start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x = make_toy2d("mixture8", 40_000, 1_000, 0).train.float()
    flops = mlp_flops_per_step(MLP(2, args.hidden, args.layers), args.batch)
    peak = matmul_peak()
    plain, ours = [], []
    for _ in range(args.repeats):  # ABBA order, so drifts in machine load hit both loops alike
        plain.append(plain_loop(x, args))
        ours.append(difflab_loop(x, args))
        ours.append(difflab_loop(x, args))
        plain.append(plain_loop(x, args))
    p_wall, o_wall = statistics.median(r[0] for r in plain), statistics.median(r[0] for r in ours)
    p_cpu, o_cpu = statistics.median(r[1] for r in plain), statistics.median(r[1] for r in ours)
    print(
        f"threads {torch.get_num_threads()}  MLP {args.layers}x{args.hidden}  "
        f"batch {args.batch}  steps {args.steps}  repeats {2 * args.repeats} (ABBA, medians)"
    )
    for name, wall, cpu in (("plain PyTorch loop", p_wall, p_cpu), ("difflab Trainer", o_wall, o_cpu)):
        gflops = cpu * flops / 1e9
        print(f"{name:19s}: {wall:8.1f} steps/s wall  {cpu:8.1f} steps/CPU-s  ({gflops:6.1f} GFLOP/CPU-s)")
    print(f"ratio difflab/plain: wall {o_wall / p_wall:.3f}   CPU {o_cpu / p_cpu:.3f}   (target >= 0.9)")
    share = o_cpu * flops / 1e9 / peak
    print(f"matmul peak (1024^3 fp32): {peak:.1f} GFLOP/s; difflab per CPU-second reaches {share:.0%} of it")


if __name__ == "__main__":
    main()
