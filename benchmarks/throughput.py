"""Training throughput of CapsNet and Efficient-CapsNet against this machine's matmul roofline.

    python benchmarks/throughput.py                      # both models, batch 32, 64, 128
    python benchmarks/throughput.py --models capsnet --batch-sizes 128 --steps 20
    python benchmarks/throughput.py --batch-sizes 32 --profile   # where each step's time goes
    python benchmarks/throughput.py --compile            # training steps through torch.compile

For every model and batch size it prints the samples per second of a full training step
(forward, loss, backward, Adam step, on real MNIST digits from the bundled sample) and of
evaluation (the forward pass alone, without gradients), the model's
FLOPs per training sample counted layer by layer, and the fraction of the roofline reached:

    roofline samples/s = measured fp32 matmul FLOP/s / FLOPs per training sample

The matmul rate is measured in the same run (square fp32 matrix products, the best of several
timings), so the fraction compares the model with what this machine's BLAS can do right now.
On a shared machine whose speed drifts, "paired" also times one matrix product right after
every timed step and gives the median over steps of each step's fraction of the roofline at
that product's rate: the step and the product it is compared with ran under the same load.
A second roofline also counts memory traffic (layer_traffic: a lower bound on the bytes each
layer moves, at the copy rate measured in the same run), which matters for a model like
Efficient-CapsNet whose elementwise work, BatchNorm and small convolutions do few FLOPs.

FLOPs per training sample: every convolution, linear layer and capsule vote/routing product
does 2 x (multiply-adds) FLOPs forward, and twice that backward (gradient with respect to its
input and to its weights), except that nothing needs the gradient of the images. Elementwise
work (ReLU, squash, softmax, batch norm, the loss, Adam) counts zero: it is memory-bound, and
the time it takes is exactly what a fraction below 1 shows. The per-layer count is checked
against torch.utils.flop_counter.FlopCounterMode on one real training step.

--profile splits a step: the forward pass, input gradient and weight gradient of every
convolution (each timed alone, with its rate and its fraction of the matmul rate), the
optimizer step, CapsNet's digit capsules (votes and routing, timed alone), and the rest
(decoder, loss, elementwise work); then torch.profiler's ten most expensive operators over
three whole steps.
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
from capsule_lib.fast_paths import keep_freed_memory
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


def memory_bytes_per_second(device: torch.device, n_floats: int = 1 << 26,
                            repeats: int = 10) -> float:
    """Best rate of copying a 256 MB fp32 tensor: bytes read plus bytes written per second."""
    source = torch.ones(n_floats, device=device)
    target = torch.empty_like(source)
    target.copy_(source)                                               # touch the pages
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * 4 * n_floats / best


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


def layer_traffic(model: nn.Module, images: torch.Tensor) -> tuple[dict[str, int], int]:
    """({leaf layer: bytes of activations moved per training sample}, parameter count), under a
    minimal-traffic model of fp32 training: forward, every leaf module reads its input once and
    writes its output once; backward, it reads the output's gradient and its saved input and
    writes the input's gradient. A capsule layer also writes its votes [in, out, dim] once and
    reads them once per routing pass (a weighted sum or an agreement), and its backward moves
    twice that. Work done between modules (reshapes, squash, masking, the loss) is left out,
    so the traffic is a lower bound and the roofline it gives an upper bound on speed."""
    traffic, hooks = {}, []

    def count(module, inputs, output, name):
        out = output.outputs if hasattr(output, "outputs") else output
        if isinstance(out, tuple):
            out = out[0]
        read = sum(x[:1].numel() for x in inputs if isinstance(x, torch.Tensor))
        written = out[:1].numel()
        moved = (read + written) + (written + 2 * read)             # forward, then backward
        if isinstance(module, (DigitCapsules, FullyConnectedCapsules)):
            votes = module.weight[..., 0].numel()                      # in x out x out_dim
            passes = (2 * module.routing_iterations if isinstance(module, DigitCapsules)
                      else 3)                                          # write + reads
            moved += 3 * passes * votes                                # forward + 2x backward
        traffic[name] = 4 * moved

    for name, module in model.named_modules():
        if not list(module.children()) or isinstance(
                module, (DigitCapsules, FullyConnectedCapsules)):
            hooks.append(module.register_forward_hook(
                lambda module, inputs, output, name=name: count(module, inputs, output, name)))
    model.train()
    with torch.no_grad():
        model(images[:1], torch.zeros(1, dtype=torch.long, device=images.device))
    for handle in hooks:
        handle.remove()
    return traffic, sum(p.numel() for p in model.parameters() if p.requires_grad)


def memory_aware_roofline(per_layer_flops: dict[str, int], per_layer_bytes: dict[str, int],
                          parameters: int, batch_size: int, flop_rate: float,
                          byte_rate: float) -> float:
    """Samples/s if every layer ran at the slower of its two limits, arithmetic (the matmul
    rate) and memory traffic (the copy rate), one layer after the other. The weights add their
    traffic once per step, shared by the batch: read forward and backward, gradient written,
    and fused Adam reading weight, gradient and two moments and writing three of them."""
    seconds = sum(max(per_layer_flops.get(name, 0) / flop_rate,
                      per_layer_bytes.get(name, 0) / byte_rate)
                  for name in set(per_layer_flops) | set(per_layer_bytes))
    seconds += 4 * 10 * parameters / batch_size / byte_rate
    return 1 / seconds


def counted_training_flops(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    """FLOPs of one training step per sample as torch's FlopCounterMode sees them."""
    with FlopCounterMode(display=False) as counter:
        output = model(images, labels)
        model.loss(output, images, labels).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() // len(labels)


# ---- where a training step's time goes ----------------------------------------------------------

def time_call(function, device: torch.device, repeats: int = 5) -> float:
    """Best wall time of function() in seconds, after one untimed call."""
    function()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def convolution_profile(model: nn.Module, images: torch.Tensor
                        ) -> list[tuple[str, str, float, int]]:
    """(layer, part, seconds, FLOPs) for the forward pass, the input gradient and the weight
    gradient (with the bias) of every convolution, each timed alone on random tensors of the
    shapes the layer sees with this batch (the layer that sees the images needs no input
    gradient), through the layer's own backward (capsule_lib.fast_paths.CpuConv2d's where the
    model uses it)."""
    shapes, hooks = {}, []

    def remember(module, inputs, output, name):                       # returns None: keeps output
        shapes[name] = (module, inputs[0].shape, output.shape)

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(
                lambda module, inputs, output, name=name: remember(module, inputs, output, name)))
    model.train()
    with torch.no_grad():
        model(images, torch.zeros(len(images), dtype=torch.long, device=images.device))
    for handle in hooks:
        handle.remove()
    rows, first = [], True
    for name, (conv, input_shape, output_shape) in shapes.items():
        x = torch.randn(input_shape, device=images.device)
        grad = torch.randn(output_shape, device=images.device)
        weight = conv.weight.detach()
        flops = 2 * grad.numel() * weight[0].numel()                     # per pass, whole batch

        def gradient(wrt_images, conv=conv, x=x, grad=grad):
            """One backward pass of the layer itself (its own autograd, fast paths included)
            for the gradient of the images or of the weight and bias, timed apart."""
            parameters = {name: parameter.detach().requires_grad_(not wrt_images)
                          for name, parameter in conv.named_parameters()}
            inputs = x.detach().requires_grad_(wrt_images)
            with torch.enable_grad():
                output = torch.func.functional_call(conv, parameters, (inputs,))
            targets = [inputs] if wrt_images else list(parameters.values())
            return lambda: torch.autograd.grad(output, targets, grad, retain_graph=True)

        with torch.no_grad():
            rows.append((name, "forward",
                         time_call(lambda conv=conv, x=x: conv(x), images.device), flops))
        if not first:
            rows.append((name, "input gradient", time_call(gradient(True), images.device),
                         flops))
        rows.append((name, "weight gradient", time_call(gradient(False), images.device), flops))
        first = False
    return rows


def digit_capsule_profile(model: nn.Module, images: torch.Tensor) -> list[tuple[str, float]]:
    """(part, seconds) of CapsNet's digit-capsule layer (votes and routing) with this batch:
    its forward pass, and forward and backward passes together, each timed alone on random
    input capsules of the shape the layer sees (no rows for a model without that layer)."""
    layer = getattr(model, "digit_capsules", None)
    if not isinstance(layer, DigitCapsules):
        return []
    with torch.no_grad():
        u = model.encode_primary_capsules(images)                     # [B, 1152, 8]
    u = torch.randn_like(u).mul_(0.3).requires_grad_(True)
    grad = torch.randn(len(u), layer.out_caps, layer.out_dim, device=images.device)

    def forward_and_backward():
        torch.autograd.backward(layer(u).outputs, grad)

    with torch.no_grad():
        forward = time_call(lambda: layer(u), images.device)
    return [("digit_capsules, forward", forward),
            ("digit_capsules, forward and backward", time_call(forward_and_backward,
                                                                images.device))]


def step_profile(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 rate: float) -> None:
    """Print where one training step's time goes: every convolution's three products timed
    alone, the optimizer step timed alone, CapsNet's digit capsules timed alone, the rest
    (other capsule layers and routing, decoder, loss, elementwise work, autograd) as what is
    left of a whole step; then the operators that
    take the most time in whole steps (torch.profiler)."""
    device = images.device
    optimizer = fused_adam(model, 1e-4)

    def step():
        output = model(images, labels)
        loss = model.loss(output, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    whole = time_call(step, device)
    convolutions = convolution_profile(model, images)
    optimizer_seconds = time_call(optimizer.step, device)
    capsules = digit_capsule_profile(model, images)
    rest = (whole - sum(row[2] for row in convolutions) - optimizer_seconds
            - sum(seconds for part, seconds in capsules if "backward" in part))
    print(f"  batch {len(labels)}: one training step {1e3 * whole:.1f} ms")
    print(f"    {'part':<44s} {'ms':>7} {'share':>6} {'GFLOP/s':>8} {'of matmul':>9}")
    for name, part, seconds, flops in convolutions:
        print(f"    {name + ', ' + part:<44s} {1e3 * seconds:>7.1f} {seconds / whole:>6.1%} "
              f"{flops / seconds / 1e9:>8.0f} {flops / seconds / rate:>9.2f}")
    print(f"    {'optimizer step (fused Adam)':<44s} {1e3 * optimizer_seconds:>7.1f} "
          f"{optimizer_seconds / whole:>6.1%}")
    for part, seconds in capsules:
        print(f"    {part:<44s} {1e3 * seconds:>7.1f} {seconds / whole:>6.1%}")
    rest_name = "the rest (decoder, loss, elementwise work)" if capsules else \
        "the rest (capsules, routing, decoder, loss)"
    print(f"    {rest_name:<44s} {1e3 * rest:>7.1f} {rest / whole:>6.1%}")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(3):
            step()
        synchronize(device)
    sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by=sort_key, row_limit=10, max_name_column_width=40))


# ---- the training step ------------------------------------------------------------------------

def samples_per_second(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       steps: int, warmup: int, compile_model: bool = False
                       ) -> tuple[float, float, list[float]]:
    """Median and best samples/s over `steps` timed training steps (after `warmup` steps;
    with compile_model, through torch.compile(model), compiled during the warm-up), and the
    fp32 matmul rate timed right after each timed step (one 2048 x 2048 product), so that
    a fraction of the roofline can pair every step with what the BLAS did next to it."""
    optimizer = fused_adam(model, 1e-4)
    model.train()
    network = torch.compile(model) if compile_model else model
    a = torch.randn(2048, 2048, device=images.device)
    b = torch.randn(2048, 2048, device=images.device)
    timings, matmul_rates = [], []
    for step in range(warmup + steps):
        synchronize(images.device)
        start = time.perf_counter()
        output = network(images, labels)
        loss = model.loss(output, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(images.device)
        if step >= warmup:
            timings.append(time.perf_counter() - start)
            start = time.perf_counter()
            a @ b
            synchronize(images.device)
            matmul_rates.append(2 * 2048 ** 3 / (time.perf_counter() - start))
    batch = len(labels)
    return (batch / statistics.median(timings), batch / min(timings),
            [batch / seconds / rate for seconds, rate in zip(timings, matmul_rates)])


@torch.no_grad()
def evaluation_samples_per_second(model: nn.Module, images: torch.Tensor, steps: int,
                                  warmup: int) -> float:
    """Median samples/s of the forward pass in eval mode without gradients (how a trained
    model classifies: no labels, the decoder masked by the longest capsule)."""
    was_training = model.training
    model.eval()
    timings = []
    for step in range(warmup + steps):
        synchronize(images.device)
        start = time.perf_counter()
        model(images)
        synchronize(images.device)
        if step >= warmup:
            timings.append(time.perf_counter() - start)
    model.train(was_training)
    return len(images) / statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["capsnet", "efficient-capsnet"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compile", action="store_true",
                        help="time the training step through torch.compile(model)")
    parser.add_argument("--profile", action="store_true",
                        help="also print where a step's time goes, layer by layer")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    kept = device.type == "cpu" and keep_freed_memory()              # as fit() does

    images, labels = load_dataset("mnist-sample", "train").tensors
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads"
          + (", training steps through torch.compile" if args.compile else "")
          + (", freed memory kept (fast_paths.keep_freed_memory)" if kept else ""))
    rate = matmul_flops_per_second(device)
    byte_rate = memory_bytes_per_second(device)
    print(f"fp32 matmul: {rate / 1e9:.1f} GFLOP/s (2048 x 2048, best of 10); memory copy: "
          f"{byte_rate / 1e9:.1f} GB/s read + written (256 MB, best of 10)\n")

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
        traffic, parameters = layer_traffic(model, batch[0])
        print(f"  activation traffic (lower bound): {sum(traffic.values()) / 1e6:.1f} MB per "
              f"training sample; weights and Adam: {40 * parameters / 1e6:.1f} MB per step")
        roofline = rate / flops
        for batch_size in args.batch_sizes:
            x = images[:batch_size].to(device)
            y = labels[:batch_size].to(device)
            median, best, paired = samples_per_second(model, x, y, args.steps, args.warmup,
                                                      args.compile)
            memory_roofline = memory_aware_roofline(per_layer, traffic, parameters, batch_size,
                                                    rate, byte_rate)
            evaluation = evaluation_samples_per_second(model, x, args.steps, args.warmup)
            rows.append((name, batch_size, median, best, roofline,
                         flops * statistics.median(paired), memory_roofline, evaluation))
            if args.profile:
                step_profile(model, x, y, rate)
        print()

    print("roofline: matmul rate / FLOPs per sample; paired: the median over steps of (step's "
          "samples/s / roofline at the matmul rate timed right after that step)")
    print("with memory: every layer at the slower of its arithmetic and its traffic")
    print("evaluation: samples/s of the forward pass alone, eval mode, no gradients")
    print(f"{'model':<18} {'batch':>5} {'samples/s':>10} {'best':>8} {'roofline':>9} "
          f"{'fraction':>9} {'paired':>7} {'with memory':>12} {'fraction':>9} "
          f"{'evaluation':>11}")
    for (name, batch_size, median, best, roofline, paired, memory_roofline,
         evaluation) in rows:
        print(f"{name:<18} {batch_size:>5} {median:>10.1f} {best:>8.1f} {roofline:>9.1f} "
              f"{median / roofline:>9.2f} {paired:>7.2f} {memory_roofline:>12.1f} "
              f"{median / memory_roofline:>9.2f} {evaluation:>11.1f}")


if __name__ == "__main__":
    main()
