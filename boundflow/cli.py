"""The ``boundflow`` command (thin: parses options, calls the library)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="boundflow", description="Deterministic bound propagation for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="bound a small model's outputs and gradients on interval data")
    demo.add_argument("--eps", type=float, default=0.05, help="input perturbation (l-infinity radius)")
    demo.add_argument("--param-radius", type=float, default=0.01, help="parameter interval radius")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="results", help="folder for the demo's plots")
    from boundflow.train.cli import add_train_parser

    add_train_parser(sub)
    ver = sub.add_parser("verify", help="verify an ONNX model against a VNN-LIB property")
    ver.add_argument("onnx")
    ver.add_argument("vnnlib")
    ver.add_argument("--timeout", type=float, default=60.0, help="seconds")
    ver.add_argument("--out", default=None, help="write the VNN-COMP result file here")
    from boundflow.pointcloud.cli import add_parser as add_pointcloud_parser

    add_pointcloud_parser(sub)
    from boundflow.bench.cli import add_parser as add_bench_parser

    add_bench_parser(sub)
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # for reproducible result records
    if args.command == "demo":
        from boundflow.demo import run_demo

        return run_demo(eps=args.eps, param_radius=args.param_radius, seed=args.seed, out_dir=args.out)
    if args.command == "verify":
        from boundflow.train.io import atomic_write_text
        from boundflow.verify import verify

        res = verify(args.onnx, args.vnnlib, timeout=args.timeout)
        print(f"{res.status}  ({res.seconds:.2f} s, {res.boxes} boxes)")
        if args.out:
            atomic_write_text(args.out, res.vnncomp())
        return 0
    if args.command == "train":
        from boundflow.train.cli import run_train

        return run_train(args)
    if args.command == "certify-pointcloud":
        from boundflow.pointcloud.cli import run as run_pointcloud

        return run_pointcloud(args)
    if args.command == "bench":
        from boundflow.bench.cli import run as run_bench

        return run_bench(args)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
