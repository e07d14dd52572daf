"""The ``diffalign`` command: one subcommand per experiment.

Every subcommand takes ``--out DIR`` and ``--smoke`` and writes ``DIR/results.json`` and its
samples; its other flags are generated from the experiment's config dataclass, so
``diffalign SUBCOMMAND --help`` lists every setting with its default.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> (module under experiments/, one-line summary); a module is imported only when
# its subcommand runs, so a missing optional extra of one experiment does not block the others.
EXPERIMENTS = {
    "toy2d": ("diffalign.experiments.toy2d", "2-D toys: flow matching (I-CFM, OT-CFM, rectified flow) and DSM (VP, sub-VP, VE)"),
    "toy2d-table": ("diffalign.experiments.toy2d_table", "the published 2-D flow-matching comparisons, over training seeds"),
    "digits": ("diffalign.experiments.digits", "class-conditional diffusion on scikit-learn's 8x8 digits, with guidance and bits/dim"),
    "align": ("diffalign.experiments.align", "reward alignment of a pretrained flow model: AWM, DDPO / Flow-GRPO, preference objectives"),
    "align-sweep": ("diffalign.experiments.align_sweep", "AWM vs the DDPO baseline on the ring: learning rates x seeds, and the beta sweep"),
    "align-bench": ("diffalign.experiments.align_bench", "every alignment method under one protocol: AWM, Flow-GRPO, "
                    "DiffusionNFT, online DPO / KTO, RWR"),
    "distill": ("diffalign.experiments.distill", "distil a flow teacher into a 1- or few-step generator: DMD, DMD2, Phased DMD, TDM"),
    "distill-sweep": ("diffalign.experiments.distill_sweep", "every distillation method on the 2-D toys, over seeds"),
    "distill-graphs": ("diffalign.experiments.distill_graphs", "DMD2 on GDSS: a trained graph model becomes a few-step graph generator"),
    "graphs": ("diffalign.experiments.graphs", "GDSS graph generation: `graphs train|sample|evaluate`"),
    "str2str": ("diffalign.experiments.str2str", "Str2Str heating-annealing: zero-shot conformation sampling with a learned score"),
    "smore": ("diffalign.experiments.smore", "SMORe offline goal-conditioned RL on a four-rooms grid world, against GCBC"),
    "symmflow": ("diffalign.experiments.symmflow", "Symmetrical Flow Matching: generation and one-step classification in one flow"),
    "score-theory": ("diffalign.experiments.score_theory", "early stopping in score matching: kernel and network regression views"),
}


# experiments whose evaluation and file writing are multi-process aware (see `diffalign launch`)
MULTI_PROCESS = ("toy2d",)
LAUNCH_SUMMARY = "run a diffalign command as N cooperating local processes (jax.distributed on 127.0.0.1)"


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<12} {summary}" for name, (_, summary) in EXPERIMENTS.items())
    lines += f"\n  {'launch':<12} {LAUNCH_SUMMARY}"
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


def experiment_parser(name: str, argv: list[str]):
    """(parser, config class, run function, remaining argv) for one experiment subcommand.

    An experiment module either has one ``Config`` and ``run``, or a ``COMMANDS`` table of
    ``name -> (Config, run, summary)`` (``diffalign graphs train|sample|evaluate``).
    """
    from diffalign.config import add_config_arguments

    module = importlib.import_module(EXPERIMENTS[name][0])
    prog = f"diffalign {name}"
    if hasattr(module, "COMMANDS"):
        commands = module.COMMANDS
        if not argv or argv[0] not in commands:
            lines = "\n".join(f"  {k:<10} {v[2]}" for k, v in commands.items())
            msg = f"usage: {prog} {{{','.join(commands)}}} --out DIR [options]\n\n{module.DESCRIPTION}\n\ncommands:\n{lines}"
            if argv and argv[0] in ("-h", "--help"):
                print(msg)
                raise SystemExit(0)
            if argv:
                msg += f"\n\n{prog}: error: unknown command {argv[0]!r}; choose one of: {', '.join(commands)}"
            print(msg, file=sys.stderr)
            raise SystemExit(2)
        config_cls, run, summary = commands[argv[0]]
        prog, description, argv = f"{prog} {argv[0]}", summary, argv[1:]
    else:
        config_cls, run, description = module.Config, module.run, module.DESCRIPTION
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, metavar="DIR", default=argparse.SUPPRESS, help="output directory (created if missing)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run through the same code path (under a minute)")
    add_config_arguments(parser, config_cls)
    return parser, config_cls, run, argv


def launch_main(argv: list[str]) -> int:
    """``diffalign launch --processes N [--local-devices K] -- COMMAND ...``"""
    from diffalign.distributed.multihost import launch

    if "--" in argv:
        cut = argv.index("--")
        own, command = argv[:cut], argv[cut + 1:]
    else:
        own, command = argv, []
    parser = argparse.ArgumentParser(
        prog="diffalign launch", description=LAUNCH_SUMMARY,
        usage="diffalign launch --processes N [--local-devices K] [--port P] [--log-dir DIR] -- COMMAND ...",
        epilog="example: diffalign launch --processes 2 -- diffalign toy2d --out runs/toy2d-2p --method icfm",
    )
    parser.add_argument("--processes", type=int, required=True, help="number of processes")
    parser.add_argument("--local-devices", type=int, default=None, help="simulated CPU devices per process")
    parser.add_argument("--port", type=int, default=None, help="coordinator port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--gpus-per-process", type=int, default=None, help="give process i the i-th block of this many GPUs")
    parser.add_argument("--log-dir", default=None, help="where processes 1..N-1 write their output (default: a temporary directory)")
    args = parser.parse_args(own)
    if not command:
        parser.error("give the command to run after '--'")
    if args.processes < 1:
        parser.error(f"--processes must be at least 1, got {args.processes}")
    if args.local_devices is not None and args.local_devices < 1:
        parser.error(f"--local-devices must be at least 1, got {args.local_devices}")
    return launch(command, args.processes, port=args.port, local_devices=args.local_devices,
                  gpus_per_process=args.gpus_per_process, log_dir=args.log_dir)


def use_compile_cache(jax) -> str | None:
    """Turn on JAX's persistent compilation cache, so that a second run of the same programs (same
    shapes, same jax) loads them instead of compiling again: the bucketed GDSS training chunk alone
    takes 50-80 s to compile on a CPU. ``DIFFALIGN_COMPILE_CACHE=DIR`` picks the folder (default
    ``~/.cache/diffalign/jax``), ``=off`` turns it off; a cache folder already configured for JAX
    (``JAX_COMPILATION_CACHE_DIR``) is kept. Returns the folder in use, or None."""
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    where = os.environ.get("DIFFALIGN_COMPILE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "diffalign", "jax"))
    if where.strip().lower() in ("", "off", "0", "no", "false"):
        return None
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return where


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "launch":
        return launch_main(argv[1:])
    from diffalign.distributed.multihost import initialize_from_env

    initialize_from_env()  # a process started by `diffalign launch` or a cluster script
    from diffalign.config import config_from_args

    if not argv or argv[0] not in EXPERIMENTS:
        top = _top_parser()
        if argv and argv[0] not in ("-h", "--help"):
            top.error(f"unknown subcommand {argv[0]!r}; choose one of: {', '.join(EXPERIMENTS)}")
        top.print_help()
        return 0 if argv else 2
    import jax

    use_compile_cache(jax)
    if jax.process_count() > 1 and argv[0] not in MULTI_PROCESS:
        print(f"error: `diffalign {argv[0]}` runs in one process; multi-process runs support: "
              f"{', '.join(MULTI_PROCESS)}", file=sys.stderr)
        return 2
    parser, config_cls, run, rest = experiment_parser(argv[0], argv[1:])
    args = parser.parse_args(rest)
    try:
        config = config_from_args(config_cls, args)
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    from diffalign.checkpoint import CheckpointError
    from diffalign.training import NonFiniteLossError

    try:
        metrics = run(config, args.out, smoke=args.smoke)
    except (CheckpointError, NonFiniteLossError, FileNotFoundError, ValueError) as e:
        # failures a user can act on: say what happened, without a traceback
        if os.environ.get("DIFFALIGN_DEBUG"):
            raise
        print(f"error: {e}\n(set DIFFALIGN_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1
    from diffalign.distributed import is_main_process

    if not is_main_process():
        return 0
    print(f"results: {args.out}/results.json")
    # the scalar headline numbers; nested tables are in results.json
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                   if not isinstance(v, (dict, list))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
