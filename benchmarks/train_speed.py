"""Training throughput and peak memory of the default model (and its first-click latency).

    python benchmarks/train_speed.py [--threads 1] [--steps 5] [--batch-size 2] [--rounds 7]
                                     [--config model.json] [--train-only-fine-head] [--fine-grad-rounds N]
                                     [--out benchmarks/results/train_speed.json]

Synthetic 128³ windows (a noisy volume with a bright ball as the structure) go through the real
training step — :class:`training.trainer.ClickLoop` (encoder once, ``--rounds`` decoder rounds
with simulated clicks, DiceCE on the upsampled logits), backward, AdamW — on CPU and, when
available, CUDA (with bf16 autocast). Reported per device: samples/s (median step after one
warm-up), peak memory (process peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA),
and the first-click latency at inference (encoder + one decoder call with the zero mask prompt +
the fine head if the model has one + upsampling to 128³, ``--latency-threads`` threads, median of 5). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from SAMMed3DLib.atomic import atomic_write_json
from SAMMed3DLib.model import build_sam3d
from training.config import DEFAULT_MODEL_CONFIG
from training.interaction import ClickLoop, mask_only_plan


def _batch(batch_size: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    grid = np.indices((size,) * 3).transpose(1, 2, 3, 0)
    images, gts = [], []
    for _ in range(batch_size):
        centre = rng.uniform(0.3 * size, 0.7 * size, 3)
        ball = np.linalg.norm(grid - centre, axis=-1) < size / 8
        images.append((rng.standard_normal((size,) * 3) + 2 * ball).astype(np.float32))
        gts.append(ball.astype(np.uint8))
    return torch.from_numpy(np.stack(images))[:, None], torch.from_numpy(np.stack(gts))[:, None]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def train_speed(
    config: dict, device: torch.device, steps: int, batch_size: int, rounds: int, only_fine_head: bool = False, fine_grad_rounds: int = 0
) -> dict:
    torch.manual_seed(0)
    model = build_sam3d(config).to(device).train()
    if only_fine_head:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("fine_head."))
    loop = ClickLoop(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    size = model.img_size
    images, gts = (t.to(device) for t in _batch(batch_size, size, 0))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(steps + 1):
        plan_rng = np.random.default_rng(step)
        plan = set() if only_fine_head else mask_only_plan(rounds, 1 if rounds > 2 else 0, rounds > 1, plan_rng)
        fine_rounds = {int(r) for r in plan_rng.choice(rounds, fine_grad_rounds, replace=False)} if 0 < fine_grad_rounds < rounds else None
        rngs = [np.random.default_rng([step, i]) for i in range(batch_size)]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with amp if amp is not None else torch.autocast("cpu", enabled=False):
            loss, _ = loop(images, gts, rngs, plan, rounds, fine_rounds)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss_mib()
    return {"device": str(device), "step_s": step_s, "samples_per_s": batch_size / step_s, "peak_mib": peak,
            "peak_kind": "cuda max allocated" if device.type == "cuda" else "process peak RSS"}


@torch.inference_mode()
def first_click_latency(config: dict, threads: int) -> dict:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = build_sam3d(config).eval()
        size = model.img_size
        image, _ = _batch(1, size, 1)
        coords = torch.tensor([[[size / 2, size / 2, size / 2]]])
        labels = torch.ones((1, 1), dtype=torch.int64)
        zeros = torch.zeros((1, 1, *model.low_res_size))
        enc, dec = [], []
        for i in range(6):
            t0 = time.perf_counter()
            emb = model.image_encoder(image)
            t1 = time.perf_counter()
            low, _ = model.predict_low_res(emb, coords, labels, zeros)
            low = model.refine(image, low, coords, labels)  # the fine head, if the model has one
            _ = F.interpolate(low, size=(size,) * 3, mode="trilinear", align_corners=False) > 0
            t2 = time.perf_counter()
            if i:
                enc.append(t1 - t0)
                dec.append(t2 - t1)
        params = sum(p.numel() for p in model.parameters())
        return {"threads": threads, "encoder_s": statistics.median(enc), "decoder_upsample_s": statistics.median(dec),
                "first_click_s": statistics.median(enc) + statistics.median(dec), "parameters": params, "fp32_mb": params * 4 / 1e6}
    finally:
        torch.set_num_threads(previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for training (the default run uses 1)")
    parser.add_argument("--latency-threads", type=int, default=2, help="CPU threads for the first-click latency")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--config", help="model config JSON file (default: training.config.DEFAULT_MODEL_CONFIG)")
    parser.add_argument("--train-only-fine-head", action="store_true", help="freeze all but the fine head (every round with clicks)")
    parser.add_argument("--fine-grad-rounds", type=int, default=0, help="rounds per step whose fine-head output is trained (0 = all)")
    parser.add_argument("--no-cuda", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/train_speed.json")
    args = parser.parse_args(argv)
    config = json.loads(Path(args.config).read_text(encoding="utf-8")) if args.config else DEFAULT_MODEL_CONFIG
    torch.set_num_threads(args.threads)
    head = (args.train_only_fine_head, args.fine_grad_rounds)
    rows = [train_speed(config, torch.device("cpu"), args.steps, args.batch_size, args.rounds, *head)]
    if torch.cuda.is_available() and not args.no_cuda:
        rows.append(train_speed(config, torch.device("cuda"), args.steps, args.batch_size, args.rounds, *head))
    latency = first_click_latency(config, args.latency_threads)
    result = {
        "config": config, "batch_size": args.batch_size, "rounds": args.rounds, "train_threads": args.threads,
        "train_only_fine_head": args.train_only_fine_head, "fine_grad_rounds": args.fine_grad_rounds,
        "training": rows, "first_click": latency,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine()},
    }
    print(f"model: {latency['parameters'] / 1e6:.2f} M parameters ({latency['fp32_mb']:.1f} MB fp32)")
    print(f"{'device':<8} {'step s':>8} {'samples/s':>10} {'peak MiB':>10}  (batch {args.batch_size}, {args.rounds} rounds, {args.threads} CPU thread(s))")
    for r in rows:
        print(f"{r['device']:<8} {r['step_s']:>8.3f} {r['samples_per_s']:>10.2f} {r['peak_mib']:>10.0f}  {r['peak_kind']}")
    print(f"first click ({latency['threads']} threads): encoder {latency['encoder_s']:.3f} s + decoder/upsample {latency['decoder_upsample_s']:.3f} s = {latency['first_click_s']:.3f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result, indent=2)
    print(json.dumps({k: result[k] for k in ("training", "first_click")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
