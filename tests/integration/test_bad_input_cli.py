"""Bad input across `train`, `check`, `prepare`, `eval` and `compare`: each case is refused
with its exit code and one line naming the problem, without a traceback, and leaves nothing
behind (`refusals.assert_refused`). Run directories are fabricated, never trained; every
refusal comes before a model loads.

Each table maps a case name to (arguments, files to create, exit code, message fragment).
A file's content is text, bytes, or None for a directory; `{cwd}` in an argument is the
working directory.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from refusals import assert_refused, message_lines

Files = dict[str, str | bytes | None]
Case = tuple[list[str], Files, int, str]

# A resolved recipe as `gspo train` writes it (the fields compare reads), and a finished run.
RECIPE = "name: run\nseed: 0\nalgo: {mode: gspo, clip_low: 0.0003, clip_high: 0.0004}\n"
RECIPE += "train: {steps: 1}\n"
ROWS = [
    {"step": 0, "eval_accuracy": 0.5, "eval_n": 4},
    {"step": 1, "reward_mean": 0.5, "clip_frac": 0.0, "ratio_mean": 1.0, "step_s": 1.0}
    | {"tokens_per_s": 10.0},
    {"step": 1, "eval_accuracy": 0.5, "eval_n": 4},
]
METRICS = "".join(json.dumps(r) + "\n" for r in ROWS)
RUN: Files = {
    "run": None,
    "run/recipe.yaml": RECIPE,
    "run/metrics.jsonl": METRICS,
    "run/final": None,
    "run/final/config.json": "{}",
}
CUSTOM = ["--set", "data.task=custom", "--set", "data.prompt_field=q"]
CUSTOM += ["--set", "data.answer_field=a", "--set", "data.source=data.jsonl"]
TWO_ROWS = '{"q": "1+1", "a": "2"}\n{"q": "2+2", "a": "4"}\n'
SHUTIL = "--set=reward=shutil:rmtree"
UNKNOWN_ALGO_FILE: Files = {"ppo": "", "grpoo": None}  # present in cwd: must not change the parse

RECIPES: dict[str, Case] = {
    "reward from the standard library": (["train", SHUTIL], {}, 2, "from the standard library"),
    "check, reward from the standard library": (
        ["check", SHUTIL],
        {"73": None},  # the folder `gspo check` used to delete while probing
        2,
        "shutil.rmtree from the standard library",
    ),
    "reward a builtin": (["check", "--set", "reward=os:remove"], {}, 2, "not a plain Python"),
    "reward imported from stdlib": (
        ["check", "--set", "reward=mine:rmtree"],
        {"mine.py": "from shutil import rmtree\n"},
        2,
        "shutil.rmtree from the standard library",
    ),
    "reward a class": (
        ["check", "--set", "reward=mine:Reward"],
        {"mine.py": "class Reward:\n    def __init__(self, c, r):\n        pass\n"},
        2,
        "is a type, not a plain Python function",
    ),
    "reward term from stdlib": (
        ["train", "r.yaml"],
        {"r.yaml": "reward: [{name: exact}, {name: 'json:dumps', weight: 0.1}]\n"},
        2,
        "json.dumps from the standard library",
    ),
    "reward from a library gspo runs on": (
        ["check", "--set", "reward=torch:save"],
        {},
        2,
        "torch.serialization.save from torch",
    ),
    "reward from gspo itself": (
        ["train", "--set", "reward=gspo_cli.rundir.checkpoint:link_final"],
        {},
        2,
        "a library gspo runs on",
    ),
    "resume a run whose reward is from stdlib": (
        ["train", "--resume", "run"],
        RUN | {"run/recipe.yaml": RECIPE + "reward: shutil:rmtree\n"},
        2,
        "from the standard library",
    ),
    "model a file": (["train", "--set", "model.name=./f.txt"], {"f.txt": "x"}, 2, "is a file"),
    "model missing folder": (["check", "--set", "model.name=./gone"], {}, 2, "no such directory"),
    "name escapes runs/": (["train", "--set", "name=../../escape"], {}, 2, "not a plain name"),
    "name absolute": (["train", "--set", "name=/tmp/x"], {}, 2, "not a plain name"),
    "name hidden": (["check", "--set", "name=.hidden"], {}, 2, "not starting with '.'"),
    "name with a space": (["prepare", "--set", "name=a b"], {}, 2, "not a plain name"),
    "compare name escapes": (
        ["compare", "--set", "name=../up", "--seeds", "0"],
        {},
        2,
        "not a plain name",
    ),
    "recipe is a directory": (["train", "adir"], {"adir": None}, 2, "is a directory"),
    "recipe not UTF-8": (["check", "r.yaml"], {"r.yaml": b"name: \xff\n"}, 2, "not valid YAML"),
    "recipe a list": (["train", "r.yaml"], {"r.yaml": "- 1\n"}, 2, "got a list"),
    "recipe missing": (["prepare", "nope.yaml"], {}, 2, "no such file"),
}

OPTIONS: dict[str, Case] = {
    "unknown option": (["train", "--bogus"], {}, 2, "No such option: --bogus"),
    "unknown command": (["bogus"], {}, 2, "No such command 'bogus'"),
    "check unknown option": (["check", "--frobnicate"], {}, 2, "No such option"),
    "check nproc 0": (["check", "--nproc", "0"], {}, 2, "Invalid value for '--nproc'"),
    "eval without a path": (["eval"], {}, 2, "Missing argument"),
    "eval samples -1": (["eval", "run", "--samples", "-1"], RUN, 2, "'--samples'"),
    "eval limit 0": (["eval", "run", "--limit", "0"], RUN, 2, "'--limit'"),
    "compare seeds not a number": (["compare", "--seeds", "x"], {}, 2, "'--seeds'"),
    "compare unknown algorithm": (
        ["compare", "--algos", "gspo", "ppo"],
        UNKNOWN_ALGO_FILE,
        2,
        "unknown algorithm 'ppo'",
    ),
    "compare misspelt algorithm": (
        ["compare", "--algos", "grpoo", "--seeds", "0"],
        UNKNOWN_ALGO_FILE,
        2,
        "unknown algorithm 'grpoo'",
    ),
    "compare bare --algos": (["compare", "--algos"], {}, 2, "'--algos' requires an argument"),
    "compare run dirs with --algos": (
        ["compare", "run", "--algos", "grpo"],
        RUN,
        2,
        "with run directories nothing is trained",
    ),
    "resume and out": (["train", "--resume", "run", "--out", "x"], RUN, 2, "exclude each other"),
}

RUN_DIRS: dict[str, Case] = {
    "eval reward from stdlib": (
        ["eval", "run"],
        RUN | {"run/recipe.yaml": RECIPE + "reward: shutil:rmtree\n"},
        2,
        "from the standard library",
    ),
    "eval run name escapes": (
        ["eval", "run"],
        RUN | {"run/recipe.yaml": RECIPE + "name: ../../x\n"},
        2,
        "not a plain name",
    ),
    "eval damaged recipe": (
        ["eval", "run"],
        RUN | {"run/recipe.yaml": "algo: [unclosed\n"},
        2,
        "not valid YAML",
    ),
    "eval recipe not UTF-8": (
        ["eval", "run"],
        RUN | {"run/recipe.yaml": b"\xfe\xff"},
        2,
        "not valid YAML",
    ),
    "eval --recipe a directory": (["eval", "run", "--recipe", "run"], RUN, 2, "is a directory"),
    "eval --recipe missing": (["eval", "run", "--recipe", "no.yaml"], RUN, 2, "no such file"),
    "eval --out a file": (
        ["eval", "run", "--out", "taken"],
        RUN | {"taken": "x"},
        2,
        "taken: it is a file",
    ),
    "eval --out under a file": (
        ["eval", "run", "--out", "taken/sub"],
        RUN | {"taken": "x"},
        2,
        "taken is a file, so no directory",
    ),
    "eval eval.json a directory": (
        ["eval", "run"],
        RUN | {"run/eval.json": None},
        2,
        "eval.json is a directory",
    ),
    "eval a file": (["eval", "f.txt"], {"f.txt": "x"}, 2, "is a file"),
    "eval an empty folder": (["eval", "adir"], {"adir": None}, 2, "not a model"),
    "eval a run without final": (
        ["eval", "run"],
        {k: v for k, v in RUN.items() if "final" not in k},
        2,
        "no final model",
    ),
    "eval missing path": (["eval", "./nowhere"], {}, 2, "no such directory"),
    "compare --out a file": (
        ["compare", "run", "--out", "taken"],
        RUN | {"taken": "x"},
        2,
        "taken: it is a file",
    ),
    "compare --out under a file": (
        ["compare", "run", "--out", "taken/sub"],
        RUN | {"taken": "x"},
        2,
        "taken is a file",
    ),
    "compare recipe --out a file": (
        ["compare", "--seeds", "0", "--out", "taken"],
        {"taken": "x"},
        2,
        "taken: it is a file",
    ),
    "compare into a run with damaged metrics": (
        ["compare", "--algos", "gspo", "--seeds", "0", "--out", "cmp"],
        {f"cmp/gspo-seed0/{k[4:]}": v for k, v in RUN.items() if k != "run"}
        | {"cmp/gspo-seed0/metrics.jsonl": b"\xff\n"},
        2,
        "metrics.jsonl is unreadable",
    ),
    "compare garbage run": (
        ["compare", "run"],
        {"run": None, "run/recipe.yaml": "{{{", "run/metrics.jsonl": "xx\n"},
        2,
        "no finished run to compare",
    ),
    "compare a file as a run": (
        ["compare", "f.txt", "g.txt"],
        {"f.txt": "", "g.txt": ""},
        2,
        "no finished run",
    ),
    "compare missing runs": (["compare", "a", "b"], {}, 2, "no finished run to compare"),
    "resume a file": (["train", "--resume", "f.txt"], {"f.txt": "x"}, 2, "not a run directory"),
    "resume an empty folder": (["train", "--resume", "adir"], {"adir": None}, 2, "no recipe.yaml"),
    "resume damaged recipe": (
        ["train", "--resume", "run"],
        RUN | {"run/recipe.yaml": "algo: [unclosed\n"},
        2,
        "not valid YAML",
    ),
    "resume a run without a checkpoint": (
        ["train", "--resume", "run"],
        RUN,
        2,
        "has no complete checkpoint to resume from",
    ),
    "train --out a file": (["train", "--out", "taken"], {"taken": "x"}, 2, "it is a file"),
    "train --out under a file": (["train", "--out", "t/run"], {"t": "x"}, 2, "t is a file"),
}

DATA: dict[str, Case] = {
    "null answer": (
        ["prepare", *CUSTOM],
        {"data.jsonl": TWO_ROWS + '{"q": "3+3", "a": null}\n'},
        2,
        "data.jsonl: record 3 has a: null",
    ),
    "null question": (
        ["prepare", *CUSTOM],
        {"data.jsonl": '{"q": null, "a": "1"}\n' + TWO_ROWS},
        2,
        "record 1 has q: null",
    ),
    "check null answer": (
        ["check", *CUSTOM],
        {"data.jsonl": TWO_ROWS * 3 + '{"q": "3+3", "a": null}\n'},
        2,
        "record 7 has a: null",
    ),
    "bad JSON line": (
        ["prepare", *CUSTOM],
        {"data.jsonl": TWO_ROWS + "{bad\n"},
        2,
        "line 3 is not valid JSON",
    ),
    "empty dataset": (["prepare", *CUSTOM], {"data.jsonl": ""}, 2, "split is empty"),
    "dataset not UTF-8": (
        ["prepare", *CUSTOM],
        {"data.jsonl": b'{"q": "\xff", "a": "1"}\n'},
        2,
        "cannot read it as UTF-8",
    ),
    "dataset a folder without splits": (
        ["prepare", *CUSTOM[:-1], "data.source=adir"],
        {"adir": None},
        2,
        "no 'train' split",
    ),
    "dataset not a data file": (
        ["prepare", *CUSTOM[:-1], "data.source=f.txt"],
        {"f.txt": "x"},
        2,
        "is not a data file",
    ),
    "dataset record not an object": (
        ["prepare", *CUSTOM],
        {"data.jsonl": TWO_ROWS + "[1, 2]\n"},
        2,
        "is a list, not an object",
    ),
}

ALL = RECIPES | OPTIONS | RUN_DIRS | DATA


@pytest.fixture
def workdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """An empty working directory; the model cache outside it; user modules forgotten after."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("GSPO_CACHE", str(tmp_path_factory.getbasetemp() / "bad-input-cache"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    before = set(sys.modules)
    yield cwd
    for name in set(sys.modules) - before:
        if name == "mine":
            del sys.modules[name]


def _create(root: Path, files: Files) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


@pytest.mark.parametrize("case", list(ALL))
def test_refused(case: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The case's command exits with its code and one line holding the fragment; nothing under
    the working directory is created, changed or removed."""
    from gspo_cli.commands import train as trainer

    def reached(*_: Any, **__: Any) -> Any:  # a refusal that regressed fails, never trains
        raise AssertionError(f"{case}: reached training")

    monkeypatch.setattr(trainer, "run", reached)
    args, files, code, fragment = ALL[case]
    _create(workdir, files)
    assert_refused(args, workdir, code=code, fragment=fragment)


@pytest.mark.parametrize(
    "command", [["train"], ["compare", "--algos", "grpo", "--seeds", "0"], ["prepare"], ["check"]]
)
def test_hub_model_not_found_is_exit_2_and_leaves_no_runs_folder(
    workdir: Path, command: list[str]
) -> None:
    """A hub id that cannot be loaded (offline) is the user's input: exit 2, and not even an
    empty runs/ (or comparison directory) is left behind."""
    assert_refused(
        [*command, "--set", "model.name=someorg/nonexistent"],
        workdir,
        code=2,
        fragment="cannot load model 'someorg/nonexistent'",
    )


@pytest.mark.parametrize("command", [["train"], ["compare", "--seeds", "0"]])
def test_interrupt_during_setup_says_nothing_was_saved(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """Ctrl-C before the first checkpoint: the message names no directory to resume (the
    empty run directory and runs/ are removed), and says nothing was saved."""
    from gspo_cli.commands import train as trainer

    def interrupted(*_: Any, **__: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "run", interrupted)
    output = assert_refused([*command, "--quiet"], workdir, code=1, fragment="nothing was saved")
    message = message_lines(output)[0]
    assert "--resume" not in message and "runs/" not in message, output


@pytest.mark.parametrize(
    "command", [["prepare"], ["check"], ["train"], ["eval", "run"], ["compare", "--seeds", "0"]]
)
def test_cache_that_is_a_file_is_refused(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """GSPO_CACHE naming a file: one line before any work, not a NotADirectoryError."""
    _create(workdir, RUN | {"cache": "x"})
    monkeypatch.setenv("GSPO_CACHE", str(workdir / "cache"))
    assert_refused(command, workdir, code=2, fragment="cannot write the cache")


def test_reward_failing_its_probes_in_train_leaves_nothing(workdir: Path) -> None:
    """`gspo train` probes the rewards once the data is prepared, before the model loads; a
    reward returning None is exit 2, and the run directory and runs/ are gone again."""
    _create(workdir, {"mine.py": "def score(completion, reference):\n    return None\n"})
    assert_refused(
        ["train", "--quiet", "--set", "reward=mine:score"],
        workdir,
        code=2,
        fragment="returned a NoneType",
    )
