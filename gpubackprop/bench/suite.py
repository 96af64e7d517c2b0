"""``gpubackprop bench``: epoch times of gpubackprop against the alternatives.

Every implementation trains the same architecture on the same data with the
same batch size, optimizer (Adam, lr 1e-3) and number of epochs, after one
untimed warm-up epoch (kernel compilation, allocators). Epochs are
interleaved (round ``r`` runs epoch ``r`` of every implementation, in an
order rotated each round) so that load from other processes falls on all of
them alike; ratios are taken per round and summarised by their median and
range. Outputs: a markdown table, ``bench.json`` (machine, configuration,
every epoch time, ratios, the table) and ``bench.png`` (a bar chart).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .config import DEFAULT_MODELS, BenchConfig, load_data
from .remote import RemoteRunner
from .runners import MODELS, OPTIMIZERS, RUNNERS, Unavailable
from ..errors import InputError
from ..fileio import atomic_path, write_json
from ..cpu_threads import usable_cpus
from ..machine import machine_info
from ..backends.numba.background import compiles_in_foreground

#: Rows of the table: ours first; the reference implementation of each device.
CPU_RUNNERS = ("ours", "ours-numpy", "gemm", "textbook", "sklearn", "ours-sklearn", "torch")
GPU_RUNNERS = ("ours", "gemm", "torch", "ours-sklearn")
#: Runners timed in a process of their own (:mod:`.remote`), per device: on the CPU,
#: PyTorch, whose OpenMP library Numba would share with its wait policy.
OWN_PROCESS = {"cpu": ("torch",)}
#: Seconds of rest before each timed CPU epoch: idle threads of the implementation timed
#: before (OpenBLAS's wait about 2**28 clock ticks, OpenMP's their spin count) stop spinning
#: instead of taking a core from the next one's epoch.
SETTLE_S = 0.3
REFERENCE = {"cpu": ("sklearn", "torch", "gemm", "textbook", "ours-numpy"),
             "gpu": ("torch", "gemm")}


@compiles_in_foreground()
def run_bench(config: BenchConfig, log=print) -> dict:
    """Measure every implementation on every model; the report as a dict.

    Parameters
    ----------
    config : BenchConfig
    log : callable
        Receives one progress line per epoch round.

    Returns
    -------
    dict
        ``config``, ``machine``, ``data``, ``results`` (one row per model and
        implementation), ``ratios``, ``skipped`` and ``markdown``.
    """
    device = config.device
    if device not in ("cpu", "gpu"):
        raise InputError(f"unknown device {device!r}; valid names: cpu, gpu")
    if config.optimizer not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {config.optimizer!r}; valid names: "
                         f"{', '.join(OPTIMIZERS)}")
    unknown_runners = sorted(set(config.runners or ()) - set(RUNNERS))
    if unknown_runners:
        raise InputError(f"unknown runner(s) {', '.join(unknown_runners)}; valid: "
                         f"{', '.join(RUNNERS)}")
    unknown = [name for name in config.models if name not in MODELS]
    if unknown:
        raise InputError(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(MODELS)}")
    # PyTorch gets as many threads as NumPy's BLAS uses by default: every available CPU.
    threads = usable_cpus()
    data = load_data(config)
    torch = {}  # PyTorch's facts, from the torch runner when one ran
    rows, ratios, skipped = [], {}, {}
    for name in config.models:
        spec = MODELS[name]
        runners = {}
        for key in (GPU_RUNNERS if device == "gpu" else CPU_RUNNERS):
            if config.runners is not None and key != "ours" and key not in config.runners:
                continue
            options = dict(device=device, seed=config.seed, optimizer=config.optimizer,
                           **({"threads": threads} if key == "torch" else {}))
            try:
                if key in OWN_PROCESS.get(device, ()):
                    runners[key] = RemoteRunner(key, name, {"n_train": config.n_train,
                                                            "n_test": config.n_test},
                                                dict(batch_size=config.batch_size, **options))
                else:
                    runners[key] = RUNNERS[key](spec, data, config.batch_size, **options)
            except Unavailable as exc:
                skipped[f"{name} / {RUNNERS[key].name}"] = str(exc)
        if "torch" in runners:
            torch = runners["torch"].facts()
        # One untimed epoch each: kernel compilation (CUDA or Numba), handles, allocators.
        for runner in runners.values():
            runner.epoch()
        times = {key: [] for key in runners}
        keys = list(runners)
        for round_ in range(config.epochs):
            shift = round_ % len(keys)
            for key in keys[shift:] + keys[:shift]:
                if device == "cpu":
                    settle()
                times[key].append(runners[key].epoch())
            log(f"{name} epoch {round_ + 1}/{config.epochs}: " + "  ".join(
                f"{runners[key].name} {times[key][-1]:.2f}s" for key in keys))
        ours = times["ours"]
        for key, runner in runners.items():
            accuracy = runner.accuracy()
            rows.append({"model": name, "implementation": runner.name, "key": key,
                         "device": runner.device, "epoch_times_s": times[key],
                         "epoch_s_min": min(times[key]),
                         "epoch_s_median": statistics.median(times[key]),
                         "samples_per_s": len(data.X_train) / min(times[key]),
                         "time_vs_ours": min(times[key]) / min(ours),
                         "step_compiler": runner.step_compiler(),
                         "test_accuracy": None if np.isnan(accuracy) else accuracy})
        for runner in runners.values():
            runner.close()
        ratios[name] = {f"ours/{key}": _paired(ours, times[key])
                        for key in REFERENCE[device] if key in times}
        if "ours-sklearn" in times and "sklearn" in times:
            # The drop-in estimator against scikit-learn's, both at the same settings.
            ratios[name]["ours-sklearn/sklearn"] = _paired(times["ours-sklearn"],
                                                           times["sklearn"])
    report = {"config": asdict(config), "machine": {**machine_info(), **torch},
              "data": data.source, "n_train": len(data.X_train), "n_test": len(data.X_test),
              "results": rows, "ratios": ratios, "skipped": skipped}
    if config.contention and device == "cpu":
        from .contention import run_contention

        report["contention"] = run_contention(data, rounds=config.epochs,
                                              batch_size=config.batch_size,
                                              optimizer=config.optimizer, seed=config.seed,
                                              log=log)
    report["machine"]["note"] = config.note
    report["markdown"] = markdown(report)
    return report


def settle() -> None:
    """Rest :data:`SETTLE_S` seconds (a function of its own, so tests can count the rests)."""
    time.sleep(SETTLE_S)


def _paired(ours, other) -> dict:
    """Ratio ours/other of each round, with the ratio of the minima."""
    per_round = [a / b for a, b in zip(ours, other)]
    return {"of_min": min(ours) / min(other), "median": statistics.median(per_round),
            "low": min(per_round), "high": max(per_round), "per_round": per_round}


def markdown(report: dict) -> str:
    """The results table, the ratios and the machine, as markdown."""
    config, machine = report["config"], report["machine"]
    rest = (f"; each timed epoch starts after {SETTLE_S} s of rest (so no implementation's "
            f"spinning threads run into the next one's epoch)" if config["device"] == "cpu"
            else "")
    lines = [f"Epoch time, {config['epochs']} epochs (after one untimed warm-up epoch) of "
             f"{report['n_train']} samples each, "
             f"batch {config['batch_size']}, float32, {_optimizer(config)}; "
             f"data: {report['data']}{rest}.",
             "",
             "| model | implementation | device | epoch s (min) | epoch s (median) | samples/s "
             "| time ÷ ours | test accuracy |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in report["results"]:
        accuracy = "—" if row["test_accuracy"] is None else f"{row['test_accuracy']:.4f}"
        lines.append(f"| {row['model']} | {row['implementation']} | {row['device']} "
                     f"| {row['epoch_s_min']:.3f} | {row['epoch_s_median']:.3f} "
                     f"| {row['samples_per_s']:,.0f} | {row['time_vs_ours']:.2f} | {accuracy} |")
    lines += ["", "Ratios of epoch times, ours ÷ other (below 1: ours is faster); "
              "median of the per-round ratios [lowest, highest], and the ratio of the minima:", ""]
    for model, entries in report["ratios"].items():
        for key, r in entries.items():
            lines.append(f"- {model}, {key}: {r['median']:.2f} [{r['low']:.2f}, {r['high']:.2f}]"
                         f"; of minima {r['of_min']:.2f}")
    for what, why in report["skipped"].items():
        lines.append(f"- skipped {what}: {why}")
    steps = [f"{row['model']} {row['implementation']}: {row['step_compiler']}"
             for row in report["results"] if row.get("step_compiler")]
    if steps:
        lines += ["", "Training step compiled by: " + "; ".join(steps) + "."]
    if "contention" in report:
        from .contention import markdown as contention_markdown

        lines += ["", contention_markdown(report["contention"]).rstrip()]
    blas = machine.get("blas", {})
    step_blas = f" (parallel step through {machine['cpu_step_blas']})" \
        if machine.get("cpu_step_blas") else ""
    lines += ["", f"Machine: {machine['cpu']}, {machine['cpus_available']} CPUs available "
              f"(load average before the run {_load(machine)}); GPU: "
              f"{machine['gpu'] or 'none'}; NumPy {machine['numpy']} with "
              f"{blas.get('name', '?')} {blas.get('version', '')} (threads {blas.get('threads')}"
              f"{_kernels(blas)})"
              f"; Numba {machine.get('numba') or 'absent'}{step_blas}"
              f"; scikit-learn {machine['scikit_learn']}; PyTorch {machine['torch'] or 'absent'}; "
              f"{machine['date']}."]
    if machine.get("note"):
        lines.append(f"Note: {machine['note']}")
    return "\n".join(lines) + "\n"


def _kernels(blas: dict) -> str:
    """``", kernels Haswell"``: the loaded BLAS builds' kernel architectures, or ""."""
    kernels = blas.get("kernels")
    return f", kernels {', '.join(kernels)}" if kernels else ""


def _optimizer(config: dict) -> str:
    name = config.get("optimizer", "adam")
    return f"{'Adam' if name == 'adam' else 'plain SGD'} (lr {OPTIMIZERS[name]:g})"


def _load(machine) -> str:
    load = machine.get("load_average")
    return "n/a" if not load else " / ".join(f"{value:.2f}" for value in load)


def plot(report: dict, path) -> None:
    """Bar chart of samples per second, one panel per model, ours highlighted."""
    from ..cli.plots import _pyplot

    plt = _pyplot()
    models = list(dict.fromkeys(row["model"] for row in report["results"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.8), dpi=100,
                             squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [row for row in report["results"] if row["model"] == model]
        names = [row["implementation"].replace(" ", "\n", 1) for row in rows]
        values = [row["samples_per_s"] for row in rows]
        colors = ["tab:orange" if row["key"].startswith("ours") else
                  "tab:gray" if row["key"] == "gemm" else "tab:blue" for row in rows]
        bars = ax.barh(names, values, color=colors)
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=3, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max(values) * 1.3)
        ax.xaxis.set_major_formatter(lambda value, _: f"{value / 1000:,.0f}k")
        ax.set_title(f"{model} ({report['config']['device']})", fontsize=10)
        ax.set_xlabel("training samples per second (best epoch)")
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(f"One epoch, batch {report['config']['batch_size']}, float32, "
                 f"{_optimizer(report['config'])}: "
                 f"{report['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_outputs(report: dict, folder) -> list:
    """Write bench.json, bench.md and bench.png into ``folder``; return the paths."""
    folder = Path(folder)
    paths = [folder / "bench.json", folder / "bench.md", folder / "bench.png"]
    write_json(paths[0], report)
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(report["markdown"])
    plot(report, paths[2])
    return paths


def add_parser(commands) -> None:
    """The ``bench`` subcommand's options, on the CLI's subparsers."""
    bench = commands.add_parser("bench", help="epoch times against NumPy, scikit-learn, PyTorch")
    bench.add_argument("--device", default="cpu", choices=("cpu", "gpu"),
                       help="cpu (fused CPU and NumPy backends vs the CPU alternatives) or "
                            "gpu (CuPy vs PyTorch on CUDA); default: cpu")
    bench.add_argument("--models", default=",".join(DEFAULT_MODELS), metavar="LIST",
                       help=f"comma-separated, from {', '.join(MODELS)} (default: %(default)s)")
    bench.add_argument("--epochs", type=int, default=3, help="timed epochs per implementation")
    bench.add_argument("--batch-size", type=int, default=128)
    bench.add_argument("--optimizer", default="adam", choices=tuple(OPTIMIZERS),
                       help="the same for every implementation: adam (lr 1e-3) or plain sgd "
                            "(lr 0.1); default: adam")
    bench.add_argument("--out", type=Path, metavar="DIR",
                       help="write bench.json, bench.md and bench.png here")
    bench.add_argument("--note", default="", help="a remark stored with the machine information")
    bench.add_argument("--contention", action="store_true",
                       help="cpu: also time a 784-512-10 epoch alone and beside a busy-loop "
                            "process, for the default path, one thread and NumPy")
    bench.add_argument("--runners", metavar="LIST", help=(
        f"comma-separated subset of {', '.join(RUNNERS)} ('ours' always runs; default: all); "
        "'ours-sklearn,sklearn' compares the drop-in estimator with scikit-learn's"))


def command(args) -> int:
    """Run ``gpubackprop bench`` from parsed arguments."""
    config = BenchConfig(device=args.device, models=[m.strip() for m in args.models.split(",")],
                         epochs=args.epochs, batch_size=args.batch_size,
                         optimizer=args.optimizer, note=args.note,
                         contention=args.contention,
                         runners=None if args.runners is None else [
                             key.strip() for key in args.runners.split(",")])
    if config.epochs < 1 or config.batch_size < 1:
        raise InputError("--epochs and --batch-size must be at least 1")
    report = run_bench(config, log=lambda line: print(line, flush=True))
    print()
    print(report["markdown"], end="")
    if args.out is not None:
        for path in write_outputs(report, args.out):
            print(f"wrote {path}")
    return 0


__all__ = ["BenchConfig", "markdown", "plot", "run_bench",
           "write_outputs"]
