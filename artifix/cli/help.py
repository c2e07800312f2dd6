"""Examples shown under each command's `--help`, the one-line argparse error style, and `artifix completion`."""

from __future__ import annotations

import argparse
from typing import Any

import shtab

G = "--generator my_gan/models.py:Generator --checkpoint G.pt --latent 512"

EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "sample": [("artifix sample --n 64 --grid samples.png", "the bundled example, seed 0"),
               (f"artifix sample {G} --n 16 --grid s.png", "your generator"),
               ("artifix sample --layer main.8 --ablate 13,63 --grid ablated.png", "with two units removed")],
    "layers": [("artifix layers", "the bundled example's layers and shapes"), (f"artifix layers {G} --json", "yours, as JSON")],
    "flags": [("artifix flags import reviews/ --layer main.8", "flags.csv (+ masks/*.png) into the label store"),
              ("artifix flags export out/", "the store's flags and masks"), ("artifix flags show", "counts per label")],
    "score": [("artifix score --out diag/", "rank main.8's units of the bundled example, write unit cards"),
              (f"artifix score {G} --layer synthesis.b16.conv1 --out diag/", "your generator")],
    "demo": [("artifix demo", "the whole story on the bundled example, into artifix-demo/")],
    "select": [("artifix select --layers main.8,main.11 --classifier clf.pt --out sel/",
                "greedy unit set per layer, the layer proposed: sel/unit_set.json"),
               ("artifix repair --unit-set sel/unit_set.json --out rep/", "remove that set")],
    "ab": [("artifix ab export --manifest rep/manifest.json --study ab", "blind pairs in ab/, the key kept apart"),
           ("artifix ab import sheet.csv --study ab --reviewer alice", "a reviewer's left/right/same answers"),
           ("artifix ab report --study ab --manifest rep/manifest.json", "win rate with its interval, into the model card")],
    "classify": [("artifix classify train", "learn the artifact classifier from the flags"),
                 ("artifix classify queue --review-k 32", "the samples a reviewer should look at next")],
    "metrics": [("artifix metrics --n 2000", "FD/KID/SWD of the example against its scenes"),
                (f"artifix metrics {G} --real refs/ --n 10000 --json", "yours against your reference images")],
    "repair": [("artifix repair", "the bundled example with the maintainers' review"),
               ("artifix repair --out cleaned/ --real refs/", "the units approved in the label store"),
               ("artifix repair --auto --k 3 --sweep --out cleaned/", "no approvals: the top 3, k chosen by a sweep")],
    "dissect": [("artifix dissect --layers main.5,main.8", "concepts of the example's units (bundled segmenter)"),
                (f"artifix dissect {G} --segmenter seg.pt --segmenter-classes road,car --layers b16", "yours")],
    "paint": [("artifix paint --concept tree --region 0,32,64,64 --mode add", "add trees to the lower half of sample 0")],
    "gate": [("artifix gate --config artifix.toml --checkpoint candidate.pt --out gate/", "in CI: exit 1 on a regression"),
             ("artifix gate --checkpoint base.pt --measure-only --out base/", "store a baseline report")],
    "stats": [("artifix stats --layer main.8 --n 1000", "per-unit quantiles, firing rates and top samples")],
    "dashboard": [("artifix dashboard", "review the bundled example at http://127.0.0.1:8501/"),
                  (f"artifix dashboard {G} --layer b16 --reviewer alice", "your run")],
    "completion": [('eval "$(artifix completion bash)"', "tab completion in this bash session"),
                   ("artifix completion zsh > ~/.zfunc/_artifix", "zsh (with ~/.zfunc on $fpath)")],
}


def epilog(name: str) -> str | None:
    """The 'examples:' block under `artifix <name> --help`."""
    ex = EXAMPLES.get(name)
    if not ex:
        return None
    width = max(len(c) for c, _ in ex)
    return "examples:\n" + "\n".join(f"  {c:<{width}}  # {why}" if len(c) < 70 else f"  {c}\n  {'':<8}# {why}" for c, why in ex)


def _alternatives(choices: Any) -> str:
    items = [repr(str(c)) for c in choices]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


class Parser(argparse.ArgumentParser):
    """argparse with artifix's error style: one sentence on one line, exit 2, and a hint where to look."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print `<prog>: error: <message>.` plus the --help hint on one line and exit 2."""
        message = message.rstrip(".")
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'.\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            name = action.option_strings[0] if action.option_strings else action.dest
            raise argparse.ArgumentError(None, f"{name} must be {_alternatives(action.choices)}, got {value!r}")


def add_completion(sub: Any, parser: argparse.ArgumentParser) -> None:
    """Register `artifix completion bash|zsh|tcsh`: print a shell completion script (generated by shtab)."""
    p = sub.add_parser("completion", help="print a shell completion script for artifix (bash, zsh or tcsh)",
                       description="print a shell completion script for artifix (bash, zsh or tcsh)",
                       epilog=epilog("completion"), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="the shell to complete in")
    p.set_defaults(_completion_parser=parser)


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of `parser` for `shell`."""
    return shtab.complete(parser, shell=shell)
