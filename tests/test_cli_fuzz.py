"""Fuzz-style CLI test (issue 19): every subcommand fed malformed arguments exits non-zero and
prints no traceback.

Each case is a valid, quick command line with one flag given a malformed value (chosen by the
flag's kind: counts, numbers, names, JSON, paths), run in-process through ``main``. The valid
command lines themselves are checked to succeed, so each failure is the malformed value's.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

import pytest

import ddcontrol  # noqa: F401  (registers the envs)
from ddcontrol.cli import build_parser, main
from ddcontrol.data import collect
from ddcontrol.score import TrainConfig, train

MSD = "ddcontrol/MassSpringDamper-v0"

# Malformed values by kind of flag. Counts and numbers: every one of them is rejected by every
# numeric flag of the CLI (no flag takes negative, NaN, infinite or non-numeric values).
BAD_INT = ["1.5", "-5"]
BAD_FLOAT = ["abc", "nan", "-1"]
BAD_JSON = ["{", "[1, 2]", '{"bogus_parameter": 1}']
BAD_CHOICE = ["bogus"]
COMMANDS = ("generate", "train", "track", "compare", "demo")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _actions(command: str) -> dict[str, argparse.Action]:
    return {a.option_strings[0]: a for a in _subparsers()[command]._actions if a.option_strings}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    collect(MSD, 30, 25, seed=0, noise=False).save(root / "msd.npz")
    train(TrainConfig(data=str(root / "msd.npz"), out=str(root / "model"), window=10, steps=5,
                      width=16, depth=1, emb_dim=16, batch_size=16, val_every=0,
                      progress=False))
    (root / "afile").write_text("not a folder, not a dataset, not a checkpoint")
    return root


def base_args(command: str, root: Path, out: Path) -> list[str]:
    """A valid command line that runs in about a second (demo: never run unmodified here)."""
    data, model = str(root / "msd.npz"), str(root / "model")
    return {
        "generate": ["generate", "--env", MSD, "--trajectories", "3", "--length", "5",
                     "--out", str(out / "d.npz"), "--quiet"],
        "train": ["train", "--data", data, "--out", str(out / "m"), "--window", "5",
                  "--steps", "2", "--width", "16", "--depth", "1", "--emb-dim", "16",
                  "--batch-size", "8", "--val-every", "0", "--no-progress", "--overwrite"],
        "track": ["track", "--model", model, "--reference", "step", "--horizon", "5",
                  "--iterations", "2", "--out", str(out / "t")],
        "compare": ["compare", "--env", MSD, "--data", data, "--controllers", "lqr",
                    "--length", "6", "--horizon", "5", "--out", str(out / "c"), "--quiet"],
        "demo": ["demo", "--quick", "--out", str(out / "demo")],
    }[command]


def _with(args: list[str], flag: str, value: str) -> list[str]:
    if flag in args:
        i = args.index(flag)
        return [*args[:i + 1], value, *args[i + 2:]]
    return [*args, flag, value]


def _kind(command: str, flag: str, action: argparse.Action) -> str | None:
    """The kind of a flag's value, or None for flags not fuzzed (switches; train's CSV-import
    flags, which only apply together with a table file)."""
    if action.nargs == 0:
        return None
    if action.choices:
        return "choice"
    if command == "train":
        fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
        hints = typing.get_type_hints(TrainConfig)
        name = action.dest
        if name not in fields:
            return None
        hint = hints[name]
        base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        base = base[0] if typing.get_origin(hint) is not tuple else hint
        if typing.get_origin(base) is tuple:
            return "int_list"
        return {int: "int", float: "float", str: "str"}.get(base)
    name = getattr(action.type, "__name__", None)
    return {"integer": "int", "int": "int", "number": "float"}.get(name, "str")


def _optional(name: str) -> bool:
    hint = typing.get_type_hints(TrainConfig)[name]
    return type(None) in typing.get_args(hint)


def _bad_strings(command: str, flag: str, root: Path) -> list[str]:
    under_file = str(root / "afile" / "x")
    return {
        "--env": ["bogus/Env-v0", ""],
        "--out": [under_file],
        "--data": [str(root / "missing.npz"), str(root / "afile"), under_file, ""],
        "--model": [str(root / "missing"), str(root / "afile"), str(root)],
        "--device": ["bogus", "cuda:99", "meta", ""],
        "--controllers": ["bogus", "", ",", "lqr,lqr", "denoising,bogus"],
        "--reference-params": BAD_JSON,
        "--excitation-params": BAD_JSON,
        "--env-kwargs": [*BAD_JSON[:3], '{"bogus": 1}', '{"outputs": ["zz"]}'],
    }.get(flag, [])


def fuzz_cases(root: Path, out: Path, commands: tuple[str, ...] = COMMANDS
               ) -> list[tuple[str, list[str]]]:
    """(case id, argv) for every malformed value of every fuzzed flag of ``commands``."""
    cases = []
    for command in commands:
        base = base_args(command, root, out)
        for flag, action in _actions(command).items():
            kind = _kind(command, flag, action)
            if kind is None or flag in ("-h", "--help"):
                continue
            values = {"int": BAD_INT, "float": BAD_FLOAT, "choice": BAD_CHOICE,
                      "int_list": ["abc", "1.5"], "str": _bad_strings(command, flag, root)}[kind]
            if command == "train" and _optional(action.dest):
                values = [v for v in values if v != ""]  # "" means None (the default) there
            for value in values:
                cases.append((f"{command} {flag} {value[:20]!r}", _with(base, flag, value)))
        cases.append((f"{command} unknown flag", [*base, "--no-such-flag"]))
        cases.append((f"{command} stray argument", [*base, "stray"]))
        required = [a.option_strings[0] for a in _actions(command).values() if a.required]
        for flag in required:
            i = base.index(flag)
            cases.append((f"{command} without {flag}", base[:i] + base[i + 2:]))
    extra = {
        "generate": [("generate --trajectories x --horizon beyond memory", _with(_with(
            base_args("generate", root, out), "--trajectories", "10" + "0" * 12),
            "--horizon", "10" + "0" * 6))],
        "train": [("train --window beyond the trajectories", _with(
            base_args("train", root, out), "--window", "26"))],
        "track": [("track --trajectory beyond the data", _with(
            base_args("track", root, out), "--trajectory", "1000000")),
            ("track --horizon beyond the model window", _with(
                base_args("track", root, out), "--horizon", "11"))],
        "compare": [("compare --warmup beyond the episode", _with(
            base_args("compare", root, out), "--warmup", "6")),
            ("compare --horizon beyond the model window", _with(_with(
                base_args("compare", root, out), "--model", str(root / "model")),
                "--horizon", "11"))],
        "demo": [("no command", []), ("unknown command", ["bogus"])],
    }
    for command in commands:
        cases += extra[command]
    return cases


@pytest.mark.parametrize("command", COMMANDS)
def test_every_fuzzed_command_line_exits_non_zero_without_a_traceback(paths, tmp_path,
                                                                        capsys, command):
    failures = []
    for case, argv in fuzz_cases(paths, tmp_path, (command,)):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - a traceback is exactly what we look for
            failures.append(f"{case}: raised {type(exc).__name__}: {exc}")
            continue
        err = capsys.readouterr().err
        if rc == 0 or rc is None:
            failures.append(f"{case}: exit code 0")
        elif "Traceback" in err:
            failures.append(f"{case}: traceback in stderr")
        elif rc == 1 and "error" in err and len([ln for ln in err.splitlines()
                                                 if "error" in ln]) != 1:
            failures.append(f"{case}: the error takes more than one line: {err}")
    assert not failures, "\n".join(failures)


def test_fuzzing_covers_every_flag_of_generate_track_compare_demo(paths, tmp_path):
    ids = [case for case, _ in fuzz_cases(paths, tmp_path)]
    for command in ("generate", "track", "compare", "demo"):
        for flag, action in _actions(command).items():
            if action.nargs == 0 or flag in ("-h", "--help"):
                continue
            assert any(case.startswith(f"{command} {flag} ") for case in ids), (command, flag)


@pytest.mark.parametrize("command", ["generate", "train", "track", "compare"])
def test_the_unmodified_command_lines_succeed(paths, tmp_path, capsys, command):
    assert main(base_args(command, paths, tmp_path)) == 0
