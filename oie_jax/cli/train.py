"""`oie-jax train` and `oie-jax export`: a run from a config file, and a model out of any step of it."""

import os
import signal

from oie_jax.cli.convert import add_hf_export_arguments


def cmd_train(args):
    from oie_jax.train.config_file import apply_overrides, load_config_file

    config = apply_overrides(load_config_file(args.config), args.overrides)
    if args.dry_run:
        from oie_jax.train.plan import plan

        print(plan(config))
        return 0
    start_distributed(args)
    from oie_jax.train.runs import train

    outcome = train(config, args.workdir)
    if outcome.stopped_by:  # the exit status of a process ended by that signal, for job schedulers
        return 128 + signal.Signals[outcome.stopped_by].value
    return 0


def start_distributed(args) -> None:
    """jax.distributed for several processes: auto-detected on TPU pods and SLURM (--distributed), or
    given explicitly (any cluster, or several CPU processes on one machine over gloo)."""
    import jax

    if args.coordinator_address or args.num_processes or args.distributed:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used by CPU devices only
    if args.coordinator_address or args.num_processes:
        jax.distributed.initialize(args.coordinator_address, num_processes=args.num_processes,
                                   process_id=args.process_id)
    elif args.distributed:
        jax.distributed.initialize(local_device_ids=slurm_node_devices(os.environ))


def slurm_node_devices(env) -> list[int] | None:
    """Every GPU of the node when a SLURM job step runs one task per node; None otherwise (JAX decides).
    Detecting SLURM, JAX gives each process the one GPU of its local rank (SLURM_LOCALID), right for one
    task per GPU, but a task that owns its node's 8 GPUs would drive GPU 0 alone (`local_device_ids` in
    the documentation of jax.distributed.initialize)."""
    if "SLURM_LOCALID" not in env:
        return None
    nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES")
    tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
    if nodes is None or tasks != nodes:
        return None
    if env.get("SLURM_GPUS_ON_NODE"):
        count = int(env["SLURM_GPUS_ON_NODE"])
    else:
        count = len([d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d])
    return list(range(count)) or None


def cmd_sweep(args):
    from oie_jax.train.sweep import sweep

    results = sweep(args.config, args.workdir, args.overrides, args.grid, args.run_settings)
    return 1 if any(r.status for r in results) else 0


def cmd_export(args):
    from oie_jax.train.export import export

    out, step, origin = export(args.workdir, args.out, args.which, format=args.format, dtype=args.dtype,
                               overwrite=args.overwrite, max_shard_bytes=int(args.max_shard_gb * 1024**3))
    print(f"wrote {out}: the parameters of step {step} ({origin})")


def add_parsers(commands) -> None:
    from oie_jax.cli.arguments import positive_int

    train = commands.add_parser(
        "train", help="train or fine-tune a model from a config file; re-running resumes",
        description="Trains as the config file says (configs/*.py; any field can be overridden with "
                    "--config.SECTION.FIELD=VALUE; every field is listed in oie_jax/train/defaults.py) and writes "
                    "checkpoints, best/, metrics.jsonl, TensorBoard files and the final model (best/ when there is "
                    "one) under WORKDIR, which may be a bucket (gs://...). Running the same command again resumes "
                    "from the latest checkpoint. SIGTERM or Ctrl-C saves the current step before stopping.")
    train.add_argument("--config", required=True, help="a Python file defining get_config()")
    train.add_argument("--workdir", required=True, help="run directory (created; reused to resume)")
    train.add_argument("--dry-run", action="store_true",
                       help="plan only: mesh and shardings for mesh.devices devices, memory per device; no data read")
    cluster = train.add_argument_group("several processes (multi-host)")
    cluster.add_argument("--distributed", action="store_true",
                         help="call jax.distributed.initialize() with its auto-detection (TPU pods, SLURM: with one "
                              "task per node, the node's GPUs are all its local devices)")
    cluster.add_argument("--coordinator-address", help="HOST:PORT of process 0")
    cluster.add_argument("--num-processes", type=positive_int)
    cluster.add_argument("--process-id", type=int)
    train.set_defaults(run=cmd_train, overrides=[])

    sweeping = commands.add_parser(
        "sweep", help="short runs side by side (learning rates, LoRA or full, ...): a table of their dev scores",
        description="Runs `oie-jax train` once per setting, one after the other, each in its own process and in "
                    "WORKDIR/SETTING, and prints (and writes to WORKDIR/sweep.md) the step each reached, its last dev "
                    "loss and the last and best value of the config's checkpoint.best_metric. --config.FIELD=VALUE "
                    "applies to every run; with --config.train.steps_limit=N each run is the first N steps of its "
                    "full run (the same schedule). Running the same command again resumes unfinished runs.")
    sweeping.add_argument("--config", required=True, help="a Python file defining get_config()")
    sweeping.add_argument("--workdir", required=True, help="the sweep's directory: one run directory per setting")
    sweeping.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                          help="a field and its values; several make every combination (e.g. train.lr=1e-4,3e-4)")
    sweeping.add_argument("--run", dest="run_settings", action="append", default=[], metavar="'FIELD=V FIELD=V'",
                          help="one more run with these fields (e.g. 'train.lora.rank=16 train.lr=1e-3')")
    sweeping.set_defaults(run=cmd_sweep, overrides=[])

    export = commands.add_parser(
        "export", help="a model directory (oie-jax or Hugging Face) from a run: best, latest or any step",
        description="Reads the parameters of one step of a training run into host memory and writes them as an "
                    "oie-jax model directory (default) or a Hugging Face one (--format hf), with the run's "
                    "tokenizer files. A LoRA run's adapters are merged into its base model for both; --format peft "
                    "writes the adapters alone, for peft's PeftModel.from_pretrained on the base model in Hugging "
                    "Face form (`oie-jax convert jax-to-hf` of the run's model.init).")
    export.add_argument("workdir", help="the run directory of `oie-jax train`")
    export.add_argument("out", help="output directory (new or empty)")
    export.add_argument("--from", dest="which", default="best", metavar="best|latest|STEP",
                        help="best/ (default), the latest checkpoint, or a step number")
    export.add_argument("--format", choices=("oie", "hf", "peft"), default="oie",
                        help="oie-jax model directory (default), Hugging Face safetensors, or a LoRA run's adapters "
                             "in peft's layout")
    add_hf_export_arguments(export)
    export.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty OUT")
    export.set_defaults(run=cmd_export)
