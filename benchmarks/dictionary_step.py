"""The dictionary training step alone, tcx against SAELens and sparsify, side by side in one run.

Every trainer runs in its own process on the same data and from the same weights: Gaussian x,
transcoder target y = relu(x·A)·B, Adam at lr 4e-4, fp32 (or bf16, or bf16-mixed: float32 weights and
every trainer's forward under bf16 autocast, as `trainer.precision=bf16-mixed`), median rows/s of `--repeats`
runs of `--steps` steps after warm-up. SAELens cannot train transcoders, so the ReLU rows are SAEs
(x -> x) with the same decoder-norm-weighted L1 (its encoder without b_dec subtracted, as tcx's);
the TopK rows are transcoders. Each row ends with its loss, so nobody is fast by doing less: with the
same start, data and objective, tcx and SAELens agree to float tolerance, and tcx and sparsify (which
divides by the target's variance) closely.

    python benchmarks/dictionary_step.py                  # about 15 minutes on 2 CPU cores
    python benchmarks/dictionary_step.py --device cuda --dtype bf16
    python benchmarks/dictionary_step.py --dtype bf16-mixed     # a CPU with AVX512-BF16 or AMX, too

The peers install into their own virtual environment, made on first use (SAELens pins
transformer-lens < 4):
    python -m venv ~/.cache/tcx/peers && ~/.cache/tcx/peers/bin/pip install torch==2.13.0 \\
        sae-lens==6.54.12 eai-sparsify==1.3.3 --extra-index-url https://download.pytorch.org/whl/cpu
or pass `--peers-python` for one you have.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PEERS_VENV = Path.home() / ".cache" / "tcx" / "peers"
PEER_PINS = ["sae-lens==6.54.12", "eai-sparsify==1.3.3"]

# trainer -> (title, python it runs in, row group it is compared within)
TRAINERS = {
    "dense": ("plain 15-line torch ReLU-L1 step (the dense limit)", "tcx", "relu"),
    "saelens-relu": ("SAELens 6.54.12 StandardTrainingSAE", "peers", "relu"),
    "tcx-relu": ("tcx ReLU, sparse step (TCX_SPARSE=1, CPU default)", "tcx", "relu"),
    "tcx-relu-dense": ("tcx ReLU, dense step (TCX_SPARSE=0, GPU default)", "tcx", "relu"),
    "sparsify-topk": ("sparsify 1.3.3 TopK transcoder", "peers", "topk"),
    "tcx-topk": ("tcx TopK transcoder, sparse step", "tcx", "topk"),
    "tcx-topk-dense": ("tcx TopK transcoder, dense step", "tcx", "topk"),
    "tcx-batchtopk": ("tcx BatchTopK transcoder, sparse step", "tcx", "topk"),
    "tcx-relu-fused": ("tcx ReLU, sparse step, fused Adam (tcx-train's optimiser)", "tcx", "relu"),
    "tcx-topk-fused": ("tcx TopK transcoder, sparse step, fused Adam (tcx-train's optimiser)", "tcx", "topk"),
    "tcx-relu-compiled": ("tcx ReLU, dense step compiled (trainer.compile=reduce-overhead), fused Adam", "tcx", "relu"),
    "tcx-topk-compiled": ("tcx TopK transcoder, dense step compiled (trainer.compile=reduce-overhead), fused Adam",
                          "tcx", "topk"),
}
BASELINE = {"relu": "saelens-relu", "topk": "sparsify-topk"}


# -- shared problem ---------------------------------------------------------------------------
def problem(args) -> dict[str, torch.Tensor]:
    """Data pool and initial weights, the same for every trainer. b_enc starts at the quantile
    that makes about `--l0` features fire per row, as in a trained ReLU dictionary (TopK kinds
    start it at 0)."""
    g = torch.Generator().manual_seed(0)
    d, m, n = args.d_in, args.d_sae, args.batch
    A, B = torch.randn(d, 4 * d, generator=g) / d**0.5, torch.randn(4 * d, d, generator=g) / (2 * d) ** 0.5
    x = torch.randn(args.pool, n, d, generator=g)
    y = torch.relu(x @ A) @ B
    W_dec = torch.randn(m, d, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_enc = W_dec.T.clone()
    b_enc = -(x[0, :512] @ W_enc).flatten().quantile(1 - args.l0 / m).expand(m).clone()
    return {"x": x, "y": y, "W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": y.mean((0, 1))}


# -- trainers: each returns step(x, y) -> (loss, l0, fvu) -------------------------------------------
forward = contextlib.nullcontext
"""What each trainer's forward runs under: bf16 autocast for `--dtype bf16-mixed`."""


def make_dense(p, args, device, dtype):
    W_enc, b_enc, W_dec, b_dec = (p[k].to(device, dtype).clone().requires_grad_()
                                  for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=args.lr)

    def step(x, y):
        with forward():
            z = torch.relu(x @ W_enc + b_enc)
            out = z @ W_dec + b_dec
            mse = (out - x).pow(2).sum(-1).mean()
            loss = mse + args.l1 * (z * W_dec.norm(dim=1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss, (z != 0).sum(-1).float().mean(), mse / (x - x.mean(0)).pow(2).sum(-1).mean()
    return step, False


def make_tcx(kind: str, dense: bool, fused: bool = False, compiled: bool = False):
    """tcx's step; `fused` with the fused Adam that conf/train.yaml gives tcx-train (every other row,
    the peers' included, runs torch's default Adam); `compiled` as `trainer.compile=reduce-overhead`
    (the dense step, captured as CUDA graphs on a GPU; compiled without them on a CPU)."""
    def make(p, args, device, dtype):
        os.environ["TCX_SPARSE"] = "0" if dense else "1"
        from tcx.dictionaries.batchtopk import BatchTopKConfig
        from tcx.dictionaries.relu import ReLUConfig
        from tcx.dictionaries.topk import TopKConfig
        from tcx.evaluation import metrics
        cfg = {"relu": ReLUConfig(d_sae=args.d_sae, l1_coeff=args.l1, normalize=False),
               "topk": TopKConfig(d_sae=args.d_sae, k=args.k, normalize=False),
               "batchtopk": BatchTopKConfig(d_sae=args.d_sae, k=args.k, normalize=False)}[kind]
        d = cfg.build(args.d_in, args.d_in)
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(d, name).copy_(p[name] if name != "b_enc" or kind == "relu" else 0 * p[name])
        d.to(device, dtype).train()
        opt = torch.optim.Adam(d.parameters(), lr=args.lr, fused=fused or None)  # (None: torch's default)
        if compiled:
            from tcx.training.compiled import compile_step
            compile_step(d, "reduce-overhead")

        def step(x, y):
            target = x if kind == "relu" else y
            with forward():
                out = d(x, target)
            opt.zero_grad()
            out.loss.backward()
            d.before_optimizer_step()
            opt.step()
            d.after_optimizer_step()
            metrics.fired(out.z)  # what the training loop also does each step
            return out.loss, metrics.l0(out.z), metrics.fvu(out.y.detach(), target)
        return step, kind == "relu"
    return make


def make_saelens(p, args, device, dtype):
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(
        d_in=args.d_in, d_sae=args.d_sae, l1_coefficient=args.l1, apply_b_dec_to_input=False,
        dtype=str(dtype).removeprefix("torch."), device=device))
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(p[name])
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)

    def step(x, y):
        with forward():
            out = sae.training_forward_pass(TrainStepInput(x, {"l1": args.l1}, None, 0, False))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        (out.feature_acts > 0).any(0)  # its trainer's did_fire, as tcx's and sparsify's
        mse = (out.sae_out - x).pow(2).sum(-1).mean()
        return out.loss, (out.feature_acts != 0).sum(-1).float().mean(), mse / (x - x.mean(0)).pow(2).sum(-1).mean()
    return step, False


def make_sparsify(p, args, device, dtype):
    from sparsify import SparseCoder, SparseCoderConfig
    sc = SparseCoder(args.d_in, SparseCoderConfig(num_latents=args.d_sae, k=args.k, transcode=True),
                     device=device, dtype=dtype)
    with torch.no_grad():
        sc.encoder.weight.copy_(p["W_enc"].T)
        sc.encoder.bias.zero_()
        sc.W_dec.copy_(p["W_dec"])
        sc.b_dec.copy_(p["b_dec"])
    opt = torch.optim.Adam(sc.parameters(), lr=args.lr)

    def step(x, y):
        with forward():
            out = sc(x, y, dead_mask=None)
        opt.zero_grad()
        out.fvu.backward()
        sc.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        sc.set_decoder_norm_to_unit_norm()
        torch.zeros(args.d_sae, dtype=torch.bool, device=x.device)[out.latent_indices.flatten()] = True
        return out.fvu, (out.latent_acts != 0).sum(-1).float().mean(), out.fvu
    return step, False


MAKERS = {"dense": make_dense, "saelens-relu": make_saelens, "sparsify-topk": make_sparsify,
          "tcx-relu": make_tcx("relu", False), "tcx-relu-dense": make_tcx("relu", True),
          "tcx-topk": make_tcx("topk", False), "tcx-topk-dense": make_tcx("topk", True),
          "tcx-batchtopk": make_tcx("batchtopk", False),
          "tcx-relu-fused": make_tcx("relu", False, fused=True), "tcx-topk-fused": make_tcx("topk", False, fused=True),
          "tcx-relu-compiled": make_tcx("relu", True, fused=True, compiled=True),
          "tcx-topk-compiled": make_tcx("topk", True, fused=True, compiled=True)}


def worker(args) -> None:
    device = torch.device(args.device)
    if device.type == "cpu":  # (sparsify takes its Triton decoder wherever triton imports; it needs CUDA)
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16-mixed": torch.float32}[args.dtype]
    p = torch.load(args.problem)
    step, _ = MAKERS[args.worker](p, args, device, dtype)
    if args.dtype == "bf16-mixed":  # (forwards only, as Lightning's mixed precision)
        global forward
        forward = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)
    pool = [(x.to(device, dtype), y.to(device, dtype)) for x, y in zip(p["x"], p["y"], strict=True)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(3):
        step(*pool[i % len(pool)])
    rates, i = [], 0
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            out = step(*pool[i % len(pool)])
            i += 1
        sync()
        rates.append(args.steps * args.batch / (time.perf_counter() - start))
    loss, l0, fvu = (float(t.detach()) for t in out)
    if args.profile:  # where a step's time goes, kernel by kernel
        with torch.profiler.profile() as prof:
            for _ in range(5):
                step(*pool[0])
            sync()
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=15), file=sys.stderr)
    print(json.dumps({"rows_per_s": statistics.median(rates), "loss": loss, "l0": l0, "fvu": fvu}))


# -- driver -----------------------------------------------------------------------------------
def peers_python(path: str | None) -> str:
    if path:
        return path
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        print(f"making the peers' environment in {PEERS_VENV} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}",
                        *PEER_PINS, "--extra-index-url", "https://download.pytorch.org/whl/cpu"], check=True)
    return str(python)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--d-in", type=int, default=384)
    parser.add_argument("--d-sae", type=int, default=6144)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--l0", type=float, default=50, help="ReLU rows: features firing per row at the start")
    parser.add_argument("--l1", type=float, default=1e-3)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pool", type=int, default=8, help="distinct batches, cycled")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "bf16-mixed"])
    parser.add_argument("--only", nargs="*", choices=list(TRAINERS), default=list(TRAINERS))
    parser.add_argument("--profile", action="store_true", help="print each trainer's top kernels")
    parser.add_argument("--peers-python", help="a python with sae-lens and eai-sparsify (made if absent)")
    parser.add_argument("--worker", choices=list(TRAINERS), help=argparse.SUPPRESS)
    parser.add_argument("--problem", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    pythons = {"tcx": sys.executable}
    if any(TRAINERS[t][1] == "peers" for t in args.only):
        pythons["peers"] = peers_python(args.peers_python)
    passed = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
              if k not in ("only", "peers_python", "worker", "problem", "profile")] + \
        (["--profile"] if args.profile else [])
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(problem(args), Path(tmp) / "problem.pt")
        for name in args.only:
            title, env, _ = TRAINERS[name]
            print(f"  {title} ...", end=" ", flush=True)
            run = subprocess.run([pythons[env], __file__, *passed, "--worker", name,
                                  "--problem", str(Path(tmp) / "problem.pt")],
                                 capture_output=True, text=True, cwd=REPO)
            if run.returncode:
                print(run.stderr[-2000:])
                continue
            results[name] = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"{results[name]['rows_per_s']:,.0f} rows/s", flush=True)
            if args.profile:
                print(run.stderr)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()}-core CPU"
    print(f"\ndictionary step on {device}, {args.dtype}: batch {args.batch}, d_in {args.d_in}, "
          f"{args.d_sae} latents, k={args.k}, ReLU starting at L0≈{args.l0:g}, "
          f"median of {args.repeats}x{args.steps} steps\n")
    print("| trainer | rows/s | ratio | L0 | FVU after |\n|---|---|---|---|---|")
    for name, r in results.items():
        base = results.get(BASELINE[TRAINERS[name][2]])
        ratio = f"{r['rows_per_s'] / base['rows_per_s']:.2f}×" if base else ""
        print(f"| {TRAINERS[name][0]} | {r['rows_per_s']:,.0f} | {ratio} | {r['l0']:.1f} | {r['fvu']:.4f} |")


if __name__ == "__main__":
    main()
