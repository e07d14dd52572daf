"""The ``diffalign`` command: one subcommand per experiment.

Every subcommand takes ``--out DIR`` and ``--smoke`` and writes ``DIR/results.json`` and its
samples; its other flags are generated from the experiment's config dataclass, so
``diffalign SUBCOMMAND --help`` lists every setting with its default.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module under experiments/, one-line summary); a module is imported only when
# its subcommand runs, so a missing optional extra of one experiment does not block the others.
EXPERIMENTS = {
    "toy2d": ("experiments.toy2d", "2-D toys: flow matching (I-CFM, OT-CFM, rectified flow) and DSM (VP, sub-VP, VE)"),
    "toy2d-table": ("experiments.toy2d_table", "the published 2-D flow-matching comparisons, over training seeds"),
    "digits": ("experiments.digits", "class-conditional diffusion on scikit-learn's 8x8 digits, with guidance and bits/dim"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<12} {summary}" for name, (_, summary) in EXPERIMENTS.items())
    return argparse.ArgumentParser(
        prog="diffalign",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="diffalign SUBCOMMAND --out DIR [--smoke] [options]",
        description="diffalign: score-based diffusion and flow models in JAX.\n\n"
        "Each subcommand runs one experiment and writes DIR/results.json (metrics, config,\n"
        "versions, wall times) and its samples. `diffalign SUBCOMMAND --help` lists its options.\n\n"
        f"subcommands:\n{lines}",
        epilog="example: diffalign toy2d --out runs/toy2d      (add --smoke for a run of under a minute)",
    )


def experiment_parser(name: str):
    """(parser, module) for one experiment subcommand."""
    from experiments.common import add_config_arguments

    module = importlib.import_module(EXPERIMENTS[name][0])
    parser = argparse.ArgumentParser(
        prog=f"diffalign {name}", description=module.DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run through the same code path (under a minute)")
    add_config_arguments(parser, module.Config)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    from experiments.common import config_from_args

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in EXPERIMENTS:
        top = _top_parser()
        if argv and argv[0] not in ("-h", "--help"):
            top.error(f"unknown subcommand {argv[0]!r}; choose one of: {', '.join(EXPERIMENTS)}")
        top.print_help()
        return 0 if argv else 2
    parser, module = experiment_parser(argv[0])
    args = parser.parse_args(argv[1:])
    try:
        config = config_from_args(module.Config, args)
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    from diffalign.checkpoint import CheckpointError
    from diffalign.training import NonFiniteLossError

    try:
        metrics = module.run(config, args.out, smoke=args.smoke)
    except (CheckpointError, NonFiniteLossError) as e:
        # failures a user can act on: say what happened, without a traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"results: {args.out}/results.json")
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
