"""The ``gpubackprop`` command line: info, check, train, sample, bench, selftest, export.

User errors (bad data, bad options, no GPU for ``--device gpu``, an output
path that cannot be written, not enough memory) print one line on stderr and
exit with status 2, never a traceback. An interrupt (Ctrl-C, SIGINT) exits
130 and SIGTERM exits 143, both with one line and no traceback: temporary
files are removed and the output folder's lock released on the way out, and
the checkpoint of the last finished epoch stays as it was (a half-finished
epoch is not saved), so ``--resume`` continues from there.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import signal
import sys
from pathlib import Path

from .._version import __version__
from ..errors import INTERRUPT_STATUS, GpubackpropError, InputError
from ..nn.optim import OPTIMIZERS


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit 2), like every other error.

    Sub-commands' parsers are of this class too (``add_subparsers`` takes the
    parent's class).
    """

    def error(self, message: str):
        message = " ".join(message.split())
        self.exit(2, f"gpubackprop: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from ..nn.activations import NAMES as ACTIVATION_NAMES, RECURRENT_NAMES
    from ..training.callbacks import FULL_BATCH_SECONDS, SCHEDULES
    from .options import argument_type as option
    from .pipeline import PRESETS

    parser = OneLineParser(prog="gpubackprop", description=(
        "Train neural networks by backpropagation on a CUDA GPU (CuPy) or the CPU (NumPy)."))
    parser.add_argument("--version", action="version", version=f"gpubackprop {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("info", help="versions, and which backend 'auto' picks and why")
    from ..bench.suite import add_parser as add_bench_parser
    add_bench_parser(commands)

    check = commands.add_parser("check", help="parity report of the NumPy reference against "
                                              "the GPU (exit 1 on a failing row, 2 when the "
                                              "backend checked is not usable)")
    check.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    check.add_argument("--against", choices=("gpu", "numba"), default="gpu",
                       help="the backend compared with NumPy: CuPy on the GPU (default) or "
                            "the fused CPU kernels")

    selftest = commands.add_parser(
        "selftest", help="gather the evidence about the GPU path into one folder: environment, "
                         "kernel compile times, parity tables, GPU tests, training, bench, "
                         "fused-call timings (CPU stand-ins without a GPU); exit 1 when a "
                         "step that ran failed")
    selftest.add_argument("--out", type=Path, required=True, metavar="DIR",
                          help="write summary.json, summary.md, logs/ and each step's files here")
    selftest.add_argument("--data-dir", type=Path, metavar="DIR",
                          help="folder holding the MNIST files (else $GPUBACKPROP_DATA and the "
                               "cache are searched; without them the GPU trains on digits)")
    selftest.add_argument("--steps", nargs="+", metavar="STEP",
                          help="run only these steps (and the environment step)")
    selftest.add_argument("--budget", type=float, metavar="SECONDS",
                          help="time for the whole run; steps left when it is spent are not "
                               "run (default: 480)")

    train = commands.add_parser("train", help="train a model on a dataset")
    train.add_argument("dataset", choices=sorted(PRESETS), help=(
        "dataset to train on; 'text FILE' trains a character-level language model on the "
        "UTF-8 text FILE"))
    train.add_argument("file", nargs="?", type=Path, metavar="FILE",
                       help="text: the plain-text file (UTF-8, at most 1 MiB)")
    train.add_argument("--model", type=option("model", "--model"), help=(
        "mlp, or a recurrent model reading each image row by row: rnn (Elman), lstm or gru "
        "(default: mlp); text: rnn, lstm or gru (default: rnn)"))
    train.add_argument("--device", type=option("device", "--device"),
                       help="auto, cpu or gpu, or a backend by name: numpy (the "
                       "reference), numba (fused CPU kernels), cupy (default: auto)")
    train.add_argument("--dtype", type=option("dtype", "--dtype"),
                       help="float32 or float64 (default: float32)")
    train.add_argument("--hidden", type=option("hidden", "--hidden"), nargs="+", metavar="N",
                       help="hidden layer widths")
    train.add_argument("--activation", type=option("activation", "--activation"),
                       help=f"hidden layers' activation: {', '.join(ACTIVATION_NAMES)} "
                            f"(rnn: {', '.join(RECURRENT_NAMES)})")
    train.add_argument("--loss", type=option("loss", "--loss"), help="cross_entropy or mse")
    train.add_argument("--optimizer", type=option("optimizer", "--optimizer"),
                       help=f"{', '.join(OPTIMIZERS)} (momentum: PyTorch's convention, "
                            "buf = mu buf + g; W -= lr buf)")
    train.add_argument("--lr", type=option("lr", "--lr"), help="learning rate")
    train.add_argument("--weight-decay", type=option("weight_decay", "--weight-decay"),
                       metavar="WD", help=("L2 weight decay, g = dW + WD W (adamw: decoupled, "
                                           "W -= lr WD W; default 0.01 there, 0 elsewhere)"))
    train.add_argument("--epochs", type=option("epochs", "--epochs"),
                       help="passes over the training set")
    train.add_argument("--batch-size", type=option("batch_size", "--batch-size"),
                       help="samples per iteration, or 'full' for the whole training set")
    train.add_argument("--clip-norm", type=option("clip_norm", "--clip-norm"),
                       help="clip gradients to this global L2 norm: all are scaled by "
                            "min(1, C / (norm + 1e-12))")
    train.add_argument("--bptt-steps", type=option("bptt_steps", "--bptt-steps"), metavar="K",
                       help="rnn, lstm, gru: truncate backpropagation through time to K steps")
    train.add_argument("--seed", type=option("seed", "--seed"),
                       help="seed of split, weights, shuffling, 0 to 2**32-1 (default 0)")
    train.add_argument("--schedule", type=option("schedule", "--schedule"), choices=SCHEDULES,
                       help="learning-rate schedule")
    train.add_argument("--patience", type=option("patience", "--patience"), metavar="N",
                       help="stop early after N epochs without a better validation loss")
    train.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="folder searched first for MNIST / Fashion-MNIST files")
    train.add_argument("--no-download", dest="download", action="store_false",
                       help="never download a dataset; fail if no folder has it")
    train.add_argument("--resume", type=Path, metavar="DIR",
                       help="continue the run checkpointed in DIR (--epochs: new total)")
    train.add_argument("--log-every", type=option("log_every", "--log-every"), metavar="N",
                       help="print every N epochs")
    train.add_argument("--out", type=Path, metavar="DIR", help=(
        "write history.json, a checkpoint (see --checkpoint-every) and "
        "loss/accuracy/weights/activations PNGs"))
    train.add_argument("--checkpoint-every", metavar="N|Ns", help=(
        "with --out or --resume: save the checkpoint every N epochs or every N seconds "
        "(e.g. 5 or 30s), and always at the end; default: every epoch, or every "
        f"{FULL_BATCH_SECONDS:g}s with --batch-size full"))
    train.add_argument("--plot", type=Path, metavar="FILE", help="save the loss curve as PNG")
    train.add_argument("--quiet", action="store_true", help="print only the final result")
    train.add_argument("--distributed", type=option("distributed", "--distributed"), nargs="?",
                       const="auto", metavar="KIND", help=(
                           "data-parallel training over the ranks of 'mpiexec -n K "
                           "gpubackprop train ...': each takes its block of every batch and "
                           "the gradients are summed (auto: NCCL for cupy, else MPI; "
                           "needs gpubackprop[mpi]); rank 0 alone prints and writes"))
    train.add_argument("--seq-length", type=option("seq_length", "--seq-length"), metavar="L",
                       help="text: characters per training window (default 64)")
    add_sampling_options(train, option)

    sample = commands.add_parser("sample", help="draw text from a model saved by "
                                                "'gpubackprop train text FILE --out DIR'")
    sample.add_argument("run", type=Path, metavar="DIR", help="the run folder (its checkpoint)")
    sample.add_argument("--device", type=option("device", "--device"),
                        help="auto, cpu, gpu, numpy, numba or cupy (default: auto)")
    add_sampling_options(sample, option, seed=True)
    export = commands.add_parser("export", help="write a trained model as an ONNX file "
                                                "(needs gpubackprop[onnx])")
    export.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                        help="a run folder written by 'gpubackprop train --out'")
    export.add_argument("output", type=Path, metavar="FILE", help="the .onnx file to write")
    export.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="the graph's float type (default: float32)")
    return parser


def add_sampling_options(parser, option, seed: bool = False) -> None:
    """--temperature, --sample-length and --prime (and --seed if ``seed``), for train text
    and sample."""
    parser.add_argument("--temperature", type=option("temperature", "--temperature"),
                        metavar="T", help="text: sample from softmax(logits / T); below 1 "
                                          "sharper, towards 0 the likeliest character "
                                          "(default 0.7)")
    parser.add_argument("--sample-length", type=option("sample_length", "--sample-length"),
                        metavar="N", help="text: characters to sample (default 300)")
    parser.add_argument("--prime", type=option("prime", "--prime"), metavar="TEXT",
                        help="text: start the sample from TEXT (default: the text's first "
                             "character)")
    if seed:
        parser.add_argument("--seed", type=option("seed", "--seed"),
                            help="seed of the draws (default: the run's seed)")


def command_info(args) -> int:
    import numpy

    from ..backends import cpu_status, cuda_version_text, describe_auto_choice, gpu_status

    status = gpu_status()
    print(f"gpubackprop {__version__}")
    print(f"python      {platform.python_version()} ({sys.executable})")
    print(f"numpy       {numpy.__version__}")
    print(f"numba       {cpu_status().numba_version or 'not installed'} "
          f"({cpu_status().reason})")
    if cpu_status().fused:
        from ..machine import cpu_step_blas

        print(f"cpu step    parallel MLP step's matrix products through {cpu_step_blas()}")
    print(f"cupy        {status.cupy_version or 'not installed'}")
    if status.usable:
        print(f"gpu         {status.device_name}")
    if status.cuda_driver is not None:
        print(f"cuda        driver {cuda_version_text(status.cuda_driver)}, "
              f"runtime {cuda_version_text(status.cuda_runtime)}")
    if status.driver_note:
        print(f"note        {status.driver_note}")
    print(f"backend     auto -> {describe_auto_choice()}")
    from ..distributed import mpi_status

    print(f"distributed {mpi_status().describe()}")
    from ..bench.runners import REFERENCE_MLP, reference_step

    try:
        compiled = f"compiled by {reference_step().describe()}"
    except Exception as exc:  # info reports what it finds; it never stops at a broken backend
        compiled = f"not compiled: {type(exc).__name__}: {exc}"
    print(f"step        {REFERENCE_MLP} MLP, cross-entropy, Adam, batch 128: {compiled}")
    return 0


def command_check(args) -> int:
    from ..verify.parity import check_main

    return check_main(args.dtype, args.against)


def command_train(args) -> int:
    if args.distributed in (None, "none"):
        return _command_train(args, None)
    from ..backends import get_backend
    from ..distributed import communicator_for, stop_all_on_error

    # Every rank joins first (NCCL picks each rank's GPU before any array exists); from
    # then on a rank that fails stops them all.
    communicator = communicator_for(get_backend(args.device or "auto"), args.distributed)
    with stop_all_on_error(communicator):
        try:
            return _command_train(args, communicator)
        except GpubackpropError as exc:
            if not getattr(exc, "collective", False):
                raise
            # Every rank raised it (a start-up mismatch): rank 0 reports, then all exit,
            # none before rank 0 has printed (mpiexec ends the rest when one fails).
            if communicator.rank == 0:
                print(f"gpubackprop: error: {exc}", file=sys.stderr, flush=True)
            communicator.allgather(None)
            return 2


def _command_train(args, communicator) -> int:
    from ..fileio import remove_if_empty
    from ..outputs import prepare_file, prepare_folder
    from ..training.checkpoint import metadata_path

    if communicator is not None and communicator.rank != 0:
        return _train(args, None, communicator)  # rank 0 alone writes
    # Every output path is checked (and its folder made) before any data is loaded.
    out = args.out
    if out is None and args.resume is not None:
        out = metadata_path(args.resume).parent
    created = []
    try:
        if out is not None:
            created += prepare_folder(out, "--out" if args.out is not None else "--resume")
        if args.plot is not None:
            created += prepare_file(args.plot, "--plot")
        with _own_folder(out, "--out" if args.out is not None else "--resume"):
            return _train(args, out, communicator)
    finally:
        remove_if_empty(created)


@contextlib.contextmanager
def _own_folder(out, option: str):
    """Hold ``out``'s lock; clear what an interrupted run left there (nothing if None)."""
    if out is None:
        yield
        return
    from .pipeline import own_output_folder

    with own_output_folder(out, option):
        try:
            yield
        except (KeyboardInterrupt, Terminated) as exc:
            from ..training.checkpoint import DEFAULT_NAME

            if (Path(out) / DEFAULT_NAME).is_file():
                raise type(exc)(f"{str(exc) or 'interrupted'}; the checkpoint of the last finished "
                                f"epoch is intact in {out} (--resume {out} continues)") \
                    from None
            raise


def _train(args, out, communicator=None) -> int:
    from ..training.callbacks import CheckpointCadence
    from ..training.checkpoint import load_checkpoint
    from .pipeline import TrainConfig, run, write_report

    if args.dataset == "text":
        return _train_text(args, out)
    if args.file is not None:
        raise InputError(f"a FILE is read by 'train text' only; {args.dataset} takes none")
    text_options = [flag for flag, value in (
        ("--seq-length", args.seq_length), ("--temperature", args.temperature),
        ("--sample-length", args.sample_length), ("--prime", args.prime)) if value is not None]
    if text_options:
        raise InputError(f"{', '.join(text_options)} apply to 'train text' only")

    options = dict(model=args.model, bptt_steps=args.bptt_steps, hidden=args.hidden,
                   activation=args.activation, loss=args.loss, optimizer=args.optimizer,
                   lr=args.lr, weight_decay=args.weight_decay, epochs=args.epochs,
                   log_every=args.log_every, seed=args.seed,
                   device=args.device, dtype=args.dtype, clip_norm=args.clip_norm,
                   schedule=args.schedule, patience=args.patience,
                   batch_size=args.batch_size, distributed=args.distributed)
    cadence = None if args.checkpoint_every is None else \
        CheckpointCadence.parse(args.checkpoint_every)
    checkpoint = None
    if args.resume is not None:
        checkpoint = load_checkpoint(args.resume, device=args.device or "auto")
        config = TrainConfig.resuming(checkpoint, args.dataset, **options)
    else:
        config = TrainConfig.for_dataset(args.dataset, **options)
    result = run(config, verbose=0 if args.quiet else 1, data_dir=args.data_dir,
                 download=args.download, out=out, checkpoint=checkpoint,
                 checkpoint_every=cadence, communicator=communicator)
    if communicator is not None and communicator.rank != 0:
        return 0
    model = result.model
    if not args.quiet:
        print(f"model: {model} trained in {result.train_seconds:.2f}s "
              f"({config.optimizer}, lr {config.lr:g}, {config.loss}, batch "
              f"{config.batch_size or 'full'}, {result.history.epochs} "
              f"{'iterations' if config.batch_size is None else 'epochs'})")
    correct = round(result.test_accuracy * result.n_test)
    print(f"test accuracy {result.test_accuracy:.4f} ({correct}/{result.n_test})")
    if out is not None:
        paths = write_report(result, out)
        print(f"wrote {', '.join(path.name for path in paths)} and checkpoint.json in {out}")
    if args.plot is not None:
        from ..errors import OutputError
        from .plots import plot_curve

        label = "MSE" if config.loss == "mse" else "loss"
        xlabel = "iteration (full batch)" if config.batch_size is None else "iteration"
        try:
            plot_curve(result.history.loss, args.plot,
                       title=f"{config.dataset}: training {label} per iteration",
                       xlabel=xlabel, ylabel=f"{label} (log scale)", log_y=True)
        except OSError as exc:
            raise OutputError(f"could not write --plot {args.plot}: "
                              f"{exc.strerror or exc}") from None
        print(f"wrote {args.plot}")
    return 0


def _train_text(args, out) -> int:
    from ..training.callbacks import CheckpointCadence
    from .pipeline import TrainConfig
    from .text_task import run_text, write_text_report

    if args.file is None:
        raise InputError("train text needs the FILE to read: gpubackprop train text FILE")
    if args.resume is not None:
        raise InputError("a text run is not resumed; 'gpubackprop sample DIR' draws more text "
                         "from its checkpoint")
    if args.plot is not None:
        raise InputError("--plot is not drawn for text runs; history.json in --out holds "
                         "the bits per character of every epoch")
    config = TrainConfig.for_dataset(
        "text", model=args.model, bptt_steps=args.bptt_steps, hidden=args.hidden,
        activation=args.activation, loss=args.loss, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, epochs=args.epochs, log_every=args.log_every,
        seed=args.seed, device=args.device, dtype=args.dtype, clip_norm=args.clip_norm,
        schedule=args.schedule, patience=args.patience, batch_size=args.batch_size,
        seq_length=args.seq_length, temperature=args.temperature,
        sample_length=args.sample_length, prime=args.prime)
    if config.patience is not None:
        raise InputError("--patience is not used by text runs: the held-out tail measures "
                         "the model, so it does not also choose the epoch")
    cadence = None if args.checkpoint_every is None else \
        CheckpointCadence.parse(args.checkpoint_every)
    result = run_text(config, args.file, verbose=0 if args.quiet else 1, out=out,
                      checkpoint_every=cadence)
    if not args.quiet:
        print(f"model: {result.model} trained in {result.train_seconds:.2f}s "
              f"({config.model}, {config.optimizer}, lr {config.lr:g}, batch "
              f"{config.batch_size or 'full'}, {result.history.epochs} epochs, windows of "
              f"{config.seq_length} characters)")
    print(f"held-out bpc {result.held_out_bpc:.4f} over the last {result.n_tail_targets} "
          f"characters predicted ({len(result.vocabulary)} distinct characters)")
    print(f"sample (temperature {config.temperature:g}, seed {config.seed}):")
    print(result.sample)
    if out is not None:
        paths = write_text_report(result, out)
        print(f"wrote {', '.join(path.name for path in paths)} and checkpoint.json in {out}")
    return 0


def command_sample(args) -> int:
    from .text_task import sample_from_checkpoint

    text, _ = sample_from_checkpoint(args.run, args.sample_length, args.temperature,
                                     args.seed, args.prime, args.device or "auto")
    print(text)
    return 0


def command_export(args) -> int:
    from ..nn.losses import get_loss
    from ..onnx import model_to_onnx
    from ..training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(args.model_dir, device="numpy")
    loss = checkpoint.extra.get("config", {}).get("loss")
    output = get_loss(loss).output_activation if loss else "identity"
    model_to_onnx(checkpoint.model, args.output, output_activation=output, dtype=args.dtype)
    print(f"wrote {args.output} ({checkpoint.model}, output {output})")
    return 0


def command_bench(args) -> int:
    from ..bench.suite import command
    return command(args)


def command_selftest(args) -> int:
    from ..verify.selftest import DEFAULT_BUDGET_S, selftest_main

    budget = DEFAULT_BUDGET_S if args.budget is None else args.budget
    return selftest_main(args.out, args.data_dir, args.steps, budget)


COMMANDS = {"info": command_info, "check": command_check, "train": command_train,
            "sample": command_sample,
            "bench": command_bench, "selftest": command_selftest, "export": command_export}


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` runs on the way out."""


def _terminate(signum, frame):
    raise Terminated("terminated by SIGTERM")


def main(argv=None) -> int:
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals to the caller
        previous = None
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # a usage error (already printed), --help or --version
            return exc.code
        return COMMANDS[args.command](args)
    except GpubackpropError as exc:
        print(f"gpubackprop: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"gpubackprop: error: out of memory ({type(exc).__name__}: {exc}); reduce "
              f"--hidden or --batch-size", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"gpubackprop: {str(exc) or 'interrupted'}", file=sys.stderr)
        return INTERRUPT_STATUS
    except Terminated as exc:
        print(f"gpubackprop: {exc}", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
