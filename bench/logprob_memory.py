"""Peak memory of per-token log-probs, forward + backward: full logits vs chunked.

    python bench/logprob_memory.py [--vocab 151936] [--hidden 1024] [--rows 8] [--tokens 512]

Each path runs in its own subprocess so peaks do not mix. On CPU the figure is the growth of
peak RSS over the process's baseline (inputs already allocated); on CUDA it is
`torch.cuda.max_memory_allocated` growth. Also checks the two paths' gradients agree.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def _probe(shape: torch.Size) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def measure(
    path: str, vocab: int, hidden: int, rows: int, tokens: int, chunk: int
) -> dict[str, float]:
    from gspo_cli.scoring.chunked import token_logprobs

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator(device="cpu").manual_seed(0)
    h = (torch.randn(rows, tokens, hidden, generator=gen) * 0.5).to(device).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=gen) * 0.02).to(device).requires_grad_()
    targets = torch.randint(0, vocab, (rows, tokens), generator=gen).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    if path == "full":
        logits = h @ w.T  # [N, T, V]
        out = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    else:
        out = token_logprobs(h, w, targets, chunk_tokens=chunk)
    out.sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "extra_peak_gb": (peak - base) / 1e9,
        "seconds": time.perf_counter() - start,
        # Gradients summed against fixed random probes (a plain sum of d/dW is ~0 by design).
        "grad_w_probe": float((w.grad.double().cpu() * _probe(w.shape)).sum()),  # type: ignore[union-attr]
        "grad_h_probe": float((h.grad.double().cpu() * _probe(h.shape)).sum()),  # type: ignore[union-attr]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--path", choices=["full", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = (args.vocab, args.hidden, args.rows, args.tokens, args.chunk)
    if args.path:
        print(json.dumps(measure(args.path, *sizes)))
        return
    flags = ["--vocab", "--hidden", "--rows", "--tokens", "--chunk"]
    passed = [item for flag, v in zip(flags, sizes, strict=True) for item in (flag, str(v))]
    results = {}
    for path in ("full", "chunked"):
        out = subprocess.run(
            [sys.executable, __file__, "--path", path, *passed],
            capture_output=True,
            text=True,
            check=True,
        )
        results[path] = json.loads(out.stdout.strip().splitlines()[-1])
    full, chunked = results["full"], results["chunked"]
    print(
        f"vocab {args.vocab}, hidden {args.hidden}, {args.rows} x {args.tokens} tokens, fp32, "
        f"chunk {args.chunk}, device {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    print(f"{'path':<10}{'extra peak GB':>15}{'seconds':>10}")
    for name, r in results.items():
        print(f"{name:<10}{r['extra_peak_gb']:>15.2f}{r['seconds']:>10.2f}")
    print(f"memory ratio full/chunked: {full['extra_peak_gb'] / chunked['extra_peak_gb']:.1f}x")
    for key in ("grad_w_probe", "grad_h_probe"):
        rel = abs(full[key] - chunked[key]) / max(abs(full[key]), 1e-30)
        print(f"{key}: full {full[key]:.9e}  chunked {chunked[key]:.9e}  rel. diff {rel:.1e}")


if __name__ == "__main__":
    main()
