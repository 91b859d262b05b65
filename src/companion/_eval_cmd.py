"""``companion eval safety|model``: run the evaluation scripts of a source checkout.

The scripts live in the repository (``safety/evaluate.py``, ``training/evaluate.py``), not in
the package: the library never imports them. They run as subprocesses with this interpreter,
found next to the package when it is imported from a checkout (``src/companion``), or in the
checkout named by ``--checkout``. Arguments after the target go to the script unchanged.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_eval_parser", "find_checkout", "script_command"]

SCRIPTS = {
    "safety": Path("safety") / "evaluate.py",
    "model": Path("training") / "evaluate.py",
}
_HELP = {
    "safety": "the safety guard on held-out and external sets (recall, FPR, AUPRC, targets)",
    "model": "base vs tuned language model (perplexity, self-ended replies, guard flags)",
}


def find_checkout(explicit: str | None = None) -> Path | None:
    """The source checkout holding the scripts, or ``None`` for an installed package.

    Args:
        explicit: A checkout directory given by the user; otherwise the one this package was
            imported from (``<checkout>/src/companion``).
    """
    root = Path(explicit).expanduser().resolve() if explicit else _package_checkout()
    if root is not None and all((root / s).is_file() for s in SCRIPTS.values()):
        return root
    return None


def _package_checkout() -> Path:
    return Path(__file__).resolve().parents[2]


def _given(args: Sequence[str], flag: str) -> bool:
    # HfArgumentParser accepts --data_dir and --data-dir, with a space or "=".
    spellings = {flag, flag.replace("_", "-")}
    return any(a in spellings or a.split("=", 1)[0] in spellings for a in args)


def script_command(target: str, checkout: Path, extra: Sequence[str]) -> list[str]:
    """The command line for ``target``, with the defaults it needs and ``extra`` appended.

    ``safety`` needs none (``safety/evaluate.py`` finds ``runs/safety`` and ``../shared/data``
    from its own location). ``model`` gets the shipped adapter, ``<checkout>/runs/sft-data``
    and ``<checkout>/runs/eval`` unless ``extra`` names them.
    """
    command = [sys.executable, str(checkout / SCRIPTS[target])]
    if target == "model":
        from .models.lm import shipped_adapter_path

        defaults = {
            "--adapter": str(shipped_adapter_path()),
            "--data_dir": str(checkout / "runs" / "sft-data"),
            "--output_dir": str(checkout / "runs" / "eval"),
        }
        for flag, value in defaults.items():
            if not _given(extra, flag):
                command += [flag, value]
    return command + list(extra)


def _missing_input(target: str, checkout: Path, extra: Sequence[str]) -> str | None:
    """Say which prepared data the script would fail on, before it loads any model."""
    if target == "model" and not _given(extra, "--data_dir"):
        data = checkout / "runs" / "sft-data"
        if not (data / "test.jsonl").is_file():
            return (
                f"no prepared data at {data}. Run `python training/prepare_data.py --output_dir "
                f"{data}` first (a few minutes), or pass --data_dir DIR."
            )
    if target == "safety" and not _given(extra, "--run_dir"):
        run = checkout / "runs" / "safety"
        if not (run / "splits" / "test.jsonl").is_file():
            return (
                f"no held-out splits at {run / 'splits'}. Run `python safety/prepare.py` first "
                "(make safety-model builds the whole guard), or pass --run_dir DIR."
            )
    return None


def _run(args: argparse.Namespace) -> int:
    target: str = args.target
    extra: list[str] = list(args.script_args)
    checkout = find_checkout(args.checkout)
    if checkout is None:
        where = args.checkout or f"{_package_checkout()} (where companion is installed)"
        print(
            f"companion eval {target}: {SCRIPTS[target]} is not in {where}. The evaluation "
            "scripts ship with the source repository, not with the installed package: run "
            "this from a source checkout (pip install -e .), or pass --checkout DIR.",
            file=sys.stderr,
        )
        return 2
    command = script_command(target, checkout, extra)
    asks_help = any(a in ("-h", "--help") for a in extra)
    missing = None if asks_help else _missing_input(target, checkout, extra)
    if missing is not None:
        print(f"companion eval {target}: {missing}", file=sys.stderr)
        return 2
    if not asks_help:
        print(f"companion eval {target}: {' '.join(command)}", file=sys.stderr, flush=True)
    return subprocess.call(command)


def add_eval_parser(sub: Any) -> None:
    """Add the ``eval`` sub-command to the ``companion`` parser's sub-parsers."""
    ev = sub.add_parser(
        "eval",
        help="run an evaluation script of the source checkout and print its summary table",
        description="Run safety/evaluate.py (target 'safety') or training/evaluate.py (target "
        "'model') of the source checkout as a subprocess; the script prints its summary table "
        "and writes its report. Arguments after the target go to the script unchanged. The "
        "scripts ship with the source repository, not with the installed package.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  companion eval safety                  # safety/evaluate.py on runs/safety\n"
        "  companion eval safety --n_boot 200     # fewer bootstrap resamples\n"
        "  companion eval model                   # shipped adapter vs embedded base\n"
        "  companion eval model --adapter runs/sft-smollm2-cpu/adapter --max_test_prompts 10\n"
        "  companion eval model --help            # the script's own flags",
    )
    ev.add_argument(
        "--checkout",
        default=None,
        metavar="DIR",
        help="source checkout with safety/ and training/ (default: the one companion runs from)",
    )
    ev.add_argument(
        "target",
        choices=sorted(SCRIPTS),
        help="; ".join(f"{k}: {v}" for k, v in sorted(_HELP.items())),
    )
    ev.add_argument("script_args", nargs=argparse.REMAINDER, help="passed to the script unchanged")
    ev.set_defaults(func=_run)
