"""Command-line entry points of the quality tools: ``evaluate``, ``simulate`` and ``finetune-text``.

``add_quality_parsers(subparsers)`` adds the three commands to an ``argparse`` sub-parser set,
and each parser's ``handler`` default runs its command. ``main_evaluate``, ``main_simulate``
and ``main_finetune_text`` run one command from an argument list. ``python -m
model.cli_quality <command> ...`` runs them without the ``fmlite`` front end.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["add_quality_parsers", "main_evaluate", "main_simulate", "main_finetune_text", "main"]

logger = logging.getLogger(__name__)

# The real data sits beside the repository: ../shared/data.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE_DIR = SHARED_DATA / "mind-small-sample"
DEMO_NEWS_DIR = SHARED_DATA / "mind-demo-news"


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    from model.quality_names import ABLATION_NAMES, MODEL_NAMES

    parser = commands.add_parser("evaluate", help="train and score FM-Lite and the baselines on the same data, with ablations")
    parser.add_argument("--data", action="append", required=True, type=Path, metavar="PATH",
                        help="MIND directory (behaviors.tsv, news.tsv) or native Parquet directory; repeat for several datasets")
    parser.add_argument("--report", required=True, type=Path, metavar="FILE.md", help="Markdown report to write; the JSON goes beside it")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="directory for the PNG plots (default: no plots)")
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache"), help="text-embedding cache directory (default %(default)s)")
    parser.add_argument("--text-model", type=Path, help="sentence-transformers directory to embed text with (default all-MiniLM-L6-v2)")
    parser.add_argument("--history-days", type=int, default=3, help="logged days the user profiles are built from, after MIND's history column (default %(default)s)")
    parser.add_argument("--train-days", type=int, default=2, help="days of training examples after the history window (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=20, help="maximum epochs per training run (default %(default)s)")
    parser.add_argument("--patience", type=int, default=3, help="epochs without a better validation loss before stopping (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="training batch size (default %(default)s)")
    parser.add_argument("--learning-rates", type=_floats, default=(1e-3, 3e-3), metavar="LR[,LR]",
                        help="tuning grid given to every trainable model (default 0.001,0.003)")
    parser.add_argument("--models", type=_names, default=MODEL_NAMES, metavar="NAME[,NAME]", help=f"models to compare (default {','.join(MODEL_NAMES)})")
    parser.add_argument("--ablations", type=_names, default=ABLATION_NAMES, metavar="NAME[,NAME]",
                        help=f"FM-Lite ablations (default {','.join(ABLATION_NAMES)}); --no-ablations runs none")
    parser.add_argument("--no-ablations", action="store_true", help="skip the ablation rows")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples over users (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling, initialisation and bootstrap (default %(default)s)")
    parser.add_argument("--title", default="FM-Lite offline evaluation", help="first heading of the report")
    parser.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    parser.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from model.config import WindowConfig
    from model.evaluate import EvaluationConfig, run_evaluation
    from model.evaluate_fit import FitConfig
    from model.report import write_report

    _configure_logging(args.log_level)
    started = time.perf_counter()
    fit = FitConfig(epochs=args.epochs, batch_size=args.batch_size, patience=args.patience, learning_rates=args.learning_rates)
    windows = WindowConfig(history_days=args.history_days, train_days=args.train_days, test_days=1)
    results = []
    for data in args.data:
        config = EvaluationConfig(
            data_dir=data,
            windows=windows,
            cache_dir=args.cache_dir,
            text_model_path=args.text_model,
            fit=fit,
            models=args.models,
            ablations=() if args.no_ablations else args.ablations,
            resamples=args.resamples,
            seed=args.seed,
        )
        results.append(run_evaluation(config))
    minutes = (time.perf_counter() - started) / 60.0
    command = "fmlite evaluate " + " ".join(shlex.quote(part) for part in getattr(args, "argv", sys.argv[2:]))
    preamble = "\n".join([f"# {args.title}", "", f"Command: `{command}`", "", f"Run time: {minutes:.1f} minutes.", ""])
    report, json_path = write_report(results, report=args.report, plots_dir=args.plots, preamble=preamble)
    for result in results:
        fmlite = result.record("fmlite")
        if fmlite is not None:
            print(f"{result.dataset}: FM-Lite MAP@50 {fmlite.metrics['map@50'].value:.4f}" if "map@50" in fmlite.metrics else result.dataset)
    print(f"wrote {report} and {json_path} in {minutes:.1f} minutes")
    return 0


def _add_simulate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("simulate", help="write a seeded MIND-format dataset with known click preferences")
    parser.add_argument("--out", required=True, type=Path, help="output directory (behaviors.tsv, news.tsv, doc_type.json, truth.npz)")
    parser.add_argument("--users", type=int, default=20_000, help="simulated users (default %(default)s)")
    parser.add_argument("--days", type=int, default=6, help="logged days (default %(default)s, as in the sample)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--sample", type=Path, default=SAMPLE_DIR, help="real MIND sample to calibrate to and take content from (default %(default)s)")
    parser.add_argument("--extra-content", type=Path, action="append", default=None, metavar="DIR",
                        help=f"more MIND news directories used as content only (default {DEMO_NEWS_DIR} when it exists)")
    parser.add_argument("--sessions-per-day", type=float, default=4.0, help="mean sessions per user and day before the click filter (default %(default)s)")
    parser.add_argument("--content-limit", type=int, help="use a random subset of this many content rows (default: all)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    parser.set_defaults(handler=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    from model.simulate import SimulationConfig, simulate

    _configure_logging(args.log_level)
    if args.extra_content is not None:
        extra = args.extra_content
    else:
        extra = [DEMO_NEWS_DIR] if DEMO_NEWS_DIR.is_dir() else []
    config = SimulationConfig(
        sample_dir=args.sample,
        extra_content_dirs=tuple(extra),
        users=args.users,
        days=args.days,
        seed=args.seed,
        sessions_per_user_day=args.sessions_per_day,
        content_limit=args.content_limit,
    )
    result = simulate(config, args.out)
    print(result.render())
    print(f"wrote {result.statistics.rows:,} impression rows of {result.statistics.users:,} users to {result.out} in {result.seconds:.0f} s")
    return 0


def _add_finetune(commands: argparse._SubParsersAction) -> None:
    from model.quality_names import POOLINGS

    parser = commands.add_parser("finetune-text", help="fine-tune the sentence encoder on glance text (Siamese, softmax loss)")
    parser.add_argument("--out", required=True, type=Path, help="output directory: model/ (the saved encoder) and the pooling table")
    parser.add_argument("--data", type=Path, action="append", default=None, metavar="DIR",
                        help=f"MIND or Parquet directories whose glance text is used (default {SAMPLE_DIR} and {DEMO_NEWS_DIR})")
    parser.add_argument("--pairs", type=int, default=2000, help="training pairs, half positive (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs over the pairs (default %(default)s)")
    parser.add_argument("--max-seq-length", type=int, default=128, help="tokens per text (default %(default)s)")
    parser.add_argument("--poolings", type=_names, default=POOLINGS, metavar="NAME[,NAME]", help=f"poolings to compare (default {','.join(POOLINGS)})")
    parser.add_argument("--base-model", type=Path, help="sentence-transformers directory to start from (default all-MiniLM-L6-v2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    parser.set_defaults(handler=_run_finetune)


def _glance_frames(directories: list[Path]):
    import pandas as pd

    from model.mind import read_news, read_doc_types
    from model.parquet import PARQUET_FILES, read_glance_frame

    frames = []
    for directory in directories:
        if (directory / PARQUET_FILES["glances"]).is_file():
            frames.append(read_glance_frame(directory))
            continue
        news = [directory / name for name in ("news.tsv", "news-extra.tsv") if (directory / name).is_file()]
        if not news:
            raise SystemExit(f"error: {directory} contains no news.tsv or glances.parquet; pass a MIND or Parquet dataset directory")
        doc_path = directory / "doc_type.json"
        frames.append(read_news(news, doc_types=read_doc_types(doc_path) if doc_path.is_file() else None).frame)
    return pd.concat(frames, ignore_index=True).drop_duplicates(["title", "abstract"])


def _run_finetune(args: argparse.Namespace) -> int:
    from model.finetune_text import FinetuneConfig, render_table, run_finetune

    _configure_logging(args.log_level)
    directories = args.data or [path for path in (SAMPLE_DIR, DEMO_NEWS_DIR) if path.is_dir()]
    glances = _glance_frames(directories)
    config = FinetuneConfig(pairs=args.pairs, epochs=args.epochs, max_seq_length=args.max_seq_length, poolings=args.poolings, seed=args.seed)
    result = run_finetune(glances, out=args.out, config=config, base_model=args.base_model)
    print(render_table(result))
    print(f"saved the fine-tuned {result.chosen}-pooling encoder to {result.model_dir}; use it with --text-model {result.model_dir}")
    return 0


def add_quality_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate``, ``simulate`` and ``finetune-text`` to ``subparsers``; each sets ``handler``."""
    _add_evaluate(subparsers)
    _add_simulate(subparsers)
    _add_finetune(subparsers)


def _run(command: str, argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="fmlite")
    add_quality_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([command, *argv])
    args.argv = list(argv)
    return int(args.handler(args))


def main_evaluate(argv: Sequence[str]) -> int:
    """Run ``fmlite evaluate`` with ``argv`` (the arguments after the command name)."""
    return _run("evaluate", argv)


def main_simulate(argv: Sequence[str]) -> int:
    """Run ``fmlite simulate`` with ``argv``."""
    return _run("simulate", argv)


def main_finetune_text(argv: Sequence[str]) -> int:
    """Run ``fmlite finetune-text`` with ``argv``."""
    return _run("finetune-text", argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments:
        print("usage: python -m model.cli_quality {evaluate,simulate,finetune-text} ...", file=sys.stderr)
        return 2
    return _run(arguments[0], arguments[1:])


if __name__ == "__main__":
    sys.exit(main())
