"""Training throughput (images/s) of difflab's UNet training step against a diffusers ``UNet2DModel`` +
``DDPMScheduler`` loop at matched parameter count, resolution and batch, measured in the same run; and
sampling seconds per image at 50 (DDIM) and 1000 (ancestral, the full chain) steps.

Both training loops do the same work per step: draw t ~ U{1..T} and eps, form x_t, predict eps, MSE,
backward, gradient clipping at 1, AdamW, EMA update. difflab's step is the real :class:`Trainer` step
(its objective, EMA and bookkeeping), not a stripped copy. Timings alternate between the two models
(repeats of ``--steps`` steps each, median reported) so that load drift on a shared machine hits both alike.

    python benchmarks/train_images.py                       # CPU, 32x32x3, batch 32
    python benchmarks/train_images.py --device cuda --batch 128 --steps 50
    pip install "difflab[bench]"                            # diffusers (optional; skipped if missing)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from difflab.experiments.images.evaluate import draw_image_samples
from difflab.experiments.toy2d.config import TrainConfig
from difflab.experiments.training.trainer import Trainer
from difflab.models.unet import UNet
from difflab.objectives import build_objective
from difflab.parameterization import TargetDenoiser
from difflab.processes import ddpm_chain


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def diffusers_unet(res: int, ch: int, width: int):
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=res,
        in_channels=ch,
        out_channels=ch,
        layers_per_block=2,
        block_out_channels=(width, 2 * width, 2 * width),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )


def difflab_unet(res: int, ch: int, width: int) -> UNet:
    return UNet(ch, width, (1, 2, 2), 2, attn_resolutions=(res // 2,), image_size=res, groups=32, num_heads=1)


def matched_difflab_unet(res: int, ch: int, target: int) -> UNet:
    """The difflab UNet (mults 1,2,2; 2 blocks; attention at res/2) whose parameter count is closest."""
    best = min(range(8, 257, 8), key=lambda w: abs(n_params(difflab_unet(res, ch, w)) - target))
    return difflab_unet(res, ch, best)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def difflab_trainer(net: UNet, x: torch.Tensor, batch: int, T: int) -> Trainer:
    chain = ddpm_chain(T, "linear")
    den = TargetDenoiser(net, chain, "eps")
    obj = build_objective(chain, "eps", "eps_simple", "discrete", "l2")
    cfg = TrainConfig(
        steps=10**9,
        batch_size=batch,
        lr=1e-4,
        optimizer="adamw",
        lr_schedule="constant",
        warmup=0,
        ema=0.999,
        grad_clip=1.0,
        checkpoint_every=0,
        log_every=10**9,
        time_bins=10,
    )
    return Trainer(den, obj, x, cfg, total_steps=10**9)


class DiffusersLoop:
    """The usual diffusers training step (examples/unconditional_image_generation/train_unconditional.py)."""

    def __init__(self, model, x: torch.Tensor, batch: int, T: int) -> None:
        from diffusers import DDPMScheduler
        from diffusers.training_utils import EMAModel

        self.model, self.x, self.batch = model, x, batch
        self.sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear")
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
        self.ema = EMAModel(model.parameters(), decay=0.999)
        self.step = 0

    def train(self, steps: int) -> None:
        self.model.train()
        for _ in range(steps):
            g = torch.Generator().manual_seed(self.step)
            idx = torch.randint(0, self.x.shape[0], (self.batch,), generator=g)
            x0 = self.x[idx]
            noise = torch.randn(x0.shape, generator=g).to(x0.device)
            t = torch.randint(0, self.sched.config.num_train_timesteps, (self.batch,), generator=g).to(
                x0.device
            )
            x_t = self.sched.add_noise(x0, noise, t)
            loss = torch.nn.functional.mse_loss(self.model(x_t, t).sample, noise)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.ema.step(self.model.parameters())
            self.step += 1


@torch.no_grad()
def diffusers_sample(model, n: int, steps: int, res: int, ch: int, device: torch.device) -> None:
    from diffusers import DDIMScheduler, DDPMScheduler

    sched = (
        DDPMScheduler(num_train_timesteps=1000) if steps >= 1000 else DDIMScheduler(num_train_timesteps=1000)
    )
    sched.set_timesteps(min(steps, 1000))
    x = torch.randn(n, ch, res, res, device=device)
    model.eval()
    for t in sched.timesteps:
        x = sched.step(model(x, t).sample, t, x).prev_sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--width", type=int, default=32, help="diffusers block_out_channels[0]")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="training steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sample-n", type=int, default=4)
    ap.add_argument("--sample-steps", default="50,1000")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    res, ch = args.resolution, args.channels
    x = (torch.rand(1024, ch, res, res, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    try:
        ref = diffusers_unet(res, ch, args.width)
    except ImportError:
        ref = None
        print("diffusers is not installed (pip install 'difflab[bench]'): timing difflab only")
    torch.manual_seed(0)
    net = (
        matched_difflab_unet(res, ch, n_params(ref)) if ref is not None else difflab_unet(res, ch, args.width)
    )
    net = net.to(device)
    print(f"device {device}, threads {torch.get_num_threads()}, {res}x{res}x{ch}, batch {args.batch}")
    print(f"difflab   {net.describe()}")
    if ref is not None:
        ref = ref.to(device)
        print(
            f"diffusers UNet2DModel(block_out_channels={ref.config.block_out_channels}, layers_per_block=2, "
            f"attention at {res // 2}): {n_params(ref):,} parameters"
        )
    trainer = difflab_trainer(net, x, args.batch, 1000)
    loop = DiffusersLoop(ref, x, args.batch, 1000) if ref is not None else None
    trainer.train(until=2)  # warm-up
    if loop is not None:
        loop.train(2)
    times: dict[str, list[float]] = {"difflab": [], "diffusers": []}
    for _ in range(args.repeats):
        for name in ("difflab", "diffusers"):
            if name == "diffusers" and loop is None:
                continue
            sync(device)
            t0 = time.perf_counter()
            if name == "difflab":
                trainer.train(until=trainer.step + args.steps)
            else:
                loop.train(args.steps)
            sync(device)
            times[name].append(args.batch * args.steps / (time.perf_counter() - t0))
    for name, v in times.items():
        if v:
            print(
                f"train  {name:9s} {statistics.median(v):8.1f} images/s "
                f"(median of {len(v)}; {[round(a) for a in v]})"
            )
    den = trainer.ema_model()
    chain = trainer.objective.process
    for steps in (int(s) for s in args.sample_steps.split(",")):
        sampler = "ddim" if steps < 1000 else "ancestral"
        t0 = time.perf_counter()
        draw_image_samples(
            den,
            chain,
            (ch, res, res),
            args.sample_n,
            sampler=sampler,
            steps=steps,
            seed=0,
            batch=args.sample_n,
            device=device,
        )
        sync(device)
        per_image = (time.perf_counter() - t0) / args.sample_n
        line = f"sample {steps:4d} steps ({sampler}): difflab {per_image:7.3f} s/image"
        if ref is not None:
            t0 = time.perf_counter()
            diffusers_sample(ref, args.sample_n, steps, res, ch, device)
            sync(device)
            line += f", diffusers {(time.perf_counter() - t0) / args.sample_n:7.3f} s/image"
        print(f"{line}  (batch {args.sample_n})")


if __name__ == "__main__":
    main()
