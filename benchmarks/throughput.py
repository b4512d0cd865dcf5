"""Training throughput of CapsNet and Efficient-CapsNet against this machine's matmul roofline.

    python benchmarks/throughput.py                      # both models, batch 32, 64, 128
    python benchmarks/throughput.py --models capsnet --batch-sizes 128 --steps 20

For every model and batch size it prints the samples per second of a full training step
(forward, loss, backward, Adam step, on real MNIST digits from the bundled sample), the model's
FLOPs per training sample counted layer by layer, and the fraction of the roofline reached:

    roofline samples/s = measured fp32 matmul FLOP/s / FLOPs per training sample

The matmul rate is measured in the same run (square fp32 matrix products, the best of several
timings), so the fraction compares the model with what this machine's BLAS can do right now.

FLOPs per training sample: every convolution, linear layer and capsule vote/routing product
does 2 x (multiply-adds) FLOPs forward, and twice that backward (gradient with respect to its
input and to its weights), except that nothing needs the gradient of the images. Elementwise
work (ReLU, squash, softmax, batch norm, the loss, Adam) counts zero: it is memory-bound, and
the time it takes is exactly what a fraction below 1 shows. The per-layer count is checked
against torch.utils.flop_counter.FlopCounterMode on one real training step.
"""
import argparse
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from capsule_lib.capsnet import DigitCapsules
from capsule_lib.data import load_dataset
from capsule_lib.efficient_capsnet import FullyConnectedCapsules
from capsule_lib.registry import build_model
from capsule_lib.training import fused_adam


# ---- the machine ------------------------------------------------------------------------------

def matmul_flops_per_second(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Best rate of an fp32 [size, size] @ [size, size] product (2 size^3 FLOPs each)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    for _ in range(3):                                                 # warm up the BLAS
        a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- FLOPs of a model, layer by layer ---------------------------------------------------------

def forward_flops(module: nn.Module, inputs: tuple, output) -> int:
    """Forward FLOPs of one sample through one layer (2 per multiply-add); 0 for other modules."""
    if isinstance(module, nn.Conv2d):
        out_channels, out_h, out_w = output.shape[1:]
        weight_per_output = module.weight[0].numel()                  # in_channels/groups x k x k
        return 2 * out_channels * out_h * out_w * weight_per_output
    if isinstance(module, nn.Linear):
        return 2 * module.in_features * module.out_features
    if isinstance(module, DigitCapsules):                             # votes, then routing
        n_in, n_out, d_out, d_in = module.weight.shape
        votes = 2 * n_in * n_out * d_out * d_in
        weighted_sums = 2 * n_in * n_out * d_out * module.routing_iterations
        agreements = 2 * n_in * n_out * d_out * (module.routing_iterations - 1)
        return votes + weighted_sums + agreements
    if isinstance(module, FullyConnectedCapsules):                    # votes, one attention pass
        n_in, n_out, d_out, d_in = module.weight.shape
        return 2 * n_in * n_out * d_out * d_in + 2 * (2 * n_in * n_out * d_out)
    return 0


def layer_flops(model: nn.Module, images: torch.Tensor) -> dict[str, int]:
    """{layer name: training FLOPs per sample}: forward x 3 (forward + two backward products),
    x 2 for the layer that sees the images (no gradient needed for them)."""
    first_layer = next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    counts, hooks = {}, []
    for name, module in model.named_modules():
        def hook(module, inputs, output, name=name):
            out = output.outputs if hasattr(output, "outputs") else output
            if isinstance(out, tuple):
                out = out[0]
            counts[name] = counts.get(name, 0) + forward_flops(module, inputs, out[:1])
        if isinstance(module, (nn.Conv2d, nn.Linear, DigitCapsules, FullyConnectedCapsules)):
            hooks.append(module.register_forward_hook(hook))
    model.train()
    with torch.no_grad():
        model(images[:1], torch.zeros(1, dtype=torch.long, device=images.device))
    for handle in hooks:
        handle.remove()
    return {name: flops * (2 if name == first_layer else 3) for name, flops in counts.items()}


def counted_training_flops(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    """FLOPs of one training step per sample as torch's FlopCounterMode sees them."""
    with FlopCounterMode(display=False) as counter:
        output = model(images, labels)
        model.loss(output, images, labels).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() // len(labels)


# ---- the training step ------------------------------------------------------------------------

def samples_per_second(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       steps: int, warmup: int) -> tuple[float, float]:
    """Median and best samples/s over `steps` timed training steps (after `warmup` steps)."""
    optimizer = fused_adam(model, 1e-4)
    model.train()
    timings = []
    for step in range(warmup + steps):
        synchronize(images.device)
        start = time.perf_counter()
        output = model(images, labels)
        loss = model.loss(output, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(images.device)
        if step >= warmup:
            timings.append(time.perf_counter() - start)
    batch = len(labels)
    return batch / statistics.median(timings), batch / min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["capsnet", "efficient-capsnet"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    images, labels = load_dataset("mnist-sample", "train").tensors
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads")
    rate = matmul_flops_per_second(device)
    print(f"fp32 matmul: {rate / 1e9:.1f} GFLOP/s (2048 x 2048, best of 10)\n")

    rows = []
    for name in args.models:
        model = build_model(name).to(device)
        batch = images[:8].to(device), labels[:8].to(device)
        per_layer = layer_flops(model, batch[0])
        flops = sum(per_layer.values())
        counted = counted_training_flops(model, *batch)
        print(f"{name}: {flops / 1e6:.1f} MFLOP per training sample from its layers "
              f"(FlopCounterMode counts {counted / 1e6:.1f}):")
        for layer, layer_count in sorted(per_layer.items(), key=lambda item: -item[1]):
            print(f"    {layer:<28s} {layer_count / 1e6:9.1f} MFLOP  {layer_count / flops:6.1%}")
        roofline = rate / flops
        for batch_size in args.batch_sizes:
            x = images[:batch_size].to(device)
            y = labels[:batch_size].to(device)
            median, best = samples_per_second(model, x, y, args.steps, args.warmup)
            rows.append((name, batch_size, median, best, roofline))
        print()

    print(f"{'model':<18} {'batch':>5} {'samples/s':>10} {'best':>8} {'roofline':>9} "
          f"{'fraction':>9}")
    for name, batch_size, median, best, roofline in rows:
        print(f"{name:<18} {batch_size:>5} {median:>10.1f} {best:>8.1f} {roofline:>9.1f} "
              f"{median / roofline:>9.2f}")


if __name__ == "__main__":
    main()
