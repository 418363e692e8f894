"""The ``toolkit`` command, generated: each command is a function of api.py, its options that
function's parameters (help from its docstring) and the fields of its config dataclasses (help from
the comment after each), parsed by tyro. ``--config FILE.yaml`` gives defaults for any of them,
``--print-config`` writes the resolved options as such a file. This module only prints results."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Sequence

from toolkit.common.config_io import checked, field_hints
from toolkit.common.errors import ToolkitError, escape, first_line, shorten, show, show_path
from toolkit.common.option_types import Spelling, is_option


@dataclass(frozen=True)
class Command:
    function: str  # in api.py
    help: str
    flags: tuple[str, ...] = ()  # positional in Python, but --flags on the command line (their spelling since 0.1)
    aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()
    repeat: tuple[str, ...] = ()  # sequences given as a repeated flag (--ood A --ood B)


COMMANDS = {
    "check": Command("check", "validate a pair file: rows and every problem"),
    "train": Command("train", "train an adapter and regression head; writes a run directory"),
    "eval": Command("evaluate", "metrics of a run or an ONNX bundle on a pair file (JSON, plot)", flags=("data",)),
    "predict": Command("predict", "score one pair with a run or an ONNX bundle"),
    "merge": Command("merge", "fold a LoRA/IA3 run into the base weights (a plain transformers model)",
                     flags=("out",)),
    "export": Command("export", "export a run or merged model to a verified ONNX bundle or a "
                      "sentence-transformers folder", flags=("out",)),
    "score": Command("score", "stream-score a pair file with a bundle or run; resumable, shardable",
                     flags=("out",), aliases=(("out", ("-o", "--output")),)),
    "search": Command("search", "search hyperparameters on dev (Optuna), re-run the best with several seeds, then "
                      "score test; resumable", flags=("out",)),
    "distill": Command("distill", "train a small student on gold pairs plus pairs a teacher scores; resumable",
                       flags=("out",)),
    "wise": Command("wise", "WiSE-FT: sweep α between a run's start and its trained weights on in-distribution "
                    "and shifted sets; optionally save the chosen α as a run", flags=("out",), repeat=("ood", "test")),
    "shift-splits": Command("shift_splits", "write STS-B genre-shift splits: train on two genres, test on the third"),
}

# Spellings of earlier versions, still accepted: each token becomes the tokens of today's option.
OLD_SPELLINGS = {"--skip-bad-rows": ("--policy", "skip"), "--quiet": ("--no-progress",),
                 "--no-score": ("--no-gold",), "--onnx": ("--format", "onnx"),
                 "--sentence-transformers": ("--format", "sentence-transformers")}
CONFIG_FLAG, PRINT_FLAGS = "--config", ("--print-config", "--print_config")
# command-line aliases of config fields (the config classes know nothing of the command line)
FIELD_ALIASES = {"base_model": ("--model",)}
GROUPS = {"ModelConfig": "model", "TrainConfig": "training", "DataConfig": "splits", "ExportConfig": "export",
          "ScoreConfig": "scoring", "RayConfig": "ray", "WiseConfig": "wise", "SourceOptions": "pair_file",
          "SearchConfig": "search", "DistillConfig": "distill"}


# -- the parser, generated ----------------------------------------------------------------------------
def _cli_type(hint: Any) -> Any:
    """``str | Path`` is read as a string (a path on the command line is text)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and str in args:
        return Optional[str] if type(None) in args else str
    return hint


def _spelled(hint: Any) -> Any:
    """``hint`` with each ``Spelling`` (option_types) as tyro's hook for a type read from one token."""
    import tyro

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        spelling = next((m for m in args[1:] if isinstance(m, Spelling)), None)
        if spelling is None:
            return hint
        return Annotated[args[0], tyro.constructors.PrimitiveConstructorSpec(
            nargs=1, metavar=spelling.metavar, instance_from_str=lambda a: spelling.parse(a[0]),
            is_instance=lambda v: v is not None and not isinstance(v, str),
            str_from_instance=lambda v: [spelling.show(v)])]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_spelled(a) for a in args)]
    return hint


def _shown(help_text: Optional[str], hint: Any, default: Any) -> dict[str, Any]:
    """How tyro shows an option: its metavar without tyro's ``{None}|`` for an optional value, and no
    second ``(default: None)`` where the help says what None means."""
    shown: dict[str, Any] = {}
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        bare = typing.get_args(inner)[0] if typing.get_origin(inner) is Annotated else inner
        if typing.get_origin(bare) is typing.Literal:
            shown["metavar"] = "{" + ",".join(map(str, typing.get_args(bare))) + "}"
        else:
            spelling = next((m for m in typing.get_args(inner)[1:] if isinstance(m, Spelling)), None)
            shown["metavar"] = spelling.metavar if spelling else getattr(bare, "__name__", "VALUE").upper()
    if default is None:
        shown["help_behavior_hint"] = "" if help_text and "default" in help_text else "(optional)"
    elif default == ():
        shown["help_behavior_hint"] = "(default: none)"
    return shown


@functools.cache
def described(cls: type) -> type:
    """``cls`` as tyro parses it: a subclass whose fields carry the help, aliases, spellings and
    hidden fields that tyro reads from annotations (the config classes stay free of the CLI library)."""
    import tyro
    from tyro._docstrings import get_field_docstring  # tyro's own reading of the comment after a field

    hints = field_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(hint):
            fields.append((f.name, described(hint), field(default_factory=lambda h=hint: as_described(h()))))
            continue
        help_text = get_field_docstring(cls, f.name, ())
        arg = tyro.conf.arg(help=help_text, aliases=FIELD_ALIASES.get(f.name), **_shown(help_text, hint, default))
        markers = () if is_option(f) else (tyro.conf.Suppress,)
        keep = {"default": f.default} if f.default is not dataclasses.MISSING else \
            {"default_factory": f.default_factory}
        fields.append((f.name, Annotated[(_spelled(hint), *markers, arg)], field(metadata=f.metadata, **keep)))
    made = dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,))
    made.__doc__ = cls.__doc__
    return made


def as_described(config: Any) -> Any:
    """A config instance as an instance of its ``described`` class (tyro's defaults must be)."""
    values = {f.name: as_described(v) if dataclasses.is_dataclass(v := getattr(config, f.name)) else v
              for f in dataclasses.fields(config)}
    return described(type(config))(**values)


def _parameters(cmd: Command, func: Callable) -> list[tuple[str, Any, Any]]:
    """(name, annotation, field) for each parameter of ``func`` that is an option: help from the
    docstring's Args, positional unless the command names it a flag."""
    import docstring_parser
    import tyro

    from toolkit.options import CONFIG_PARAMS, option_classes

    # the config-object parameters are for Python callers: their fields are the command's flags already
    hints = typing.get_type_hints(func, {**vars(sys.modules[func.__module__]),
                                         **{c.__name__: c for c in option_classes(cmd.function)}},
                                  include_extras=True)
    docs = {p.arg_name: " ".join(p.description.split()) for p in docstring_parser.parse(func.__doc__ or "").params}
    aliases = dict(cmd.aliases)
    out = []
    for p in inspect.signature(func).parameters.values():
        if p.kind is p.VAR_KEYWORD or p.name == "say" or p.name in CONFIG_PARAMS.values():
            continue
        positional = p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in cmd.flags
        markers = [tyro.conf.Positional] if positional else []
        if p.name in cmd.repeat:
            markers.append(tyro.conf.UseAppendAction)
        shown = _shown(docs.get(p.name), _cli_type(hints[p.name]), dataclasses.MISSING if p.default is p.empty
                       else p.default)
        if positional:
            shown["metavar"] = p.name.upper()
        arg = tyro.conf.arg(help=docs.get(p.name), aliases=aliases.get(p.name), **shown)
        ann = Annotated[(_cli_type(hints[p.name]), *markers, arg)]
        out.append((p.name, ann, field() if p.default is p.empty else field(default=p.default)))
    return out


def command_class(name: str) -> type:
    """The dataclass tyro parses for ``name``: the function's parameters, then one field per config class."""
    from toolkit import api
    from toolkit.options import option_classes

    cmd = COMMANDS[name]
    fields = _parameters(cmd, getattr(api, cmd.function))
    fields += [(GROUPS[c.__name__], described(c), field(default_factory=described(c)))
               for c in option_classes(cmd.function)]
    made = dataclasses.make_dataclass(name.replace("-", "_"), fields)
    made.__doc__ = cmd.help
    return made


def flatten(parsed: Any) -> dict[str, Any]:
    """The parsed command as the keyword arguments of its api function (config classes opened)."""
    from toolkit.options import option_fields

    out: dict[str, Any] = {}
    for f in dataclasses.fields(parsed):
        value = getattr(parsed, f.name)
        if dataclasses.is_dataclass(value):
            out.update({leaf: getattr(owner, leaf) for owner, leaf in option_fields(value)})
        else:
            out[f.name] = value
    return out


def _defaults_from(path: str, cls: type, name: str) -> Any:
    """An instance of ``cls`` holding the options in the YAML file (the rest: defaults, or missing);
    a run's config.json gives the settings it was trained with."""
    import tyro
    import yaml

    from toolkit.options import configs

    where = show_path(Path(path))
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        said = first_line(Exception(" ".join(str(e).split())))
        raise ToolkitError(f"{where}: cannot read the config file ({said})") from None
    if not isinstance(loaded, dict):
        raise ToolkitError(f"{where}: expected a mapping of option: value, got {show(loaded)}")
    if "toolkit_version" in loaded:  # a run's config.json: its training settings, to train again
        loaded = _flat({k: loaded.get(k, {}) for k in ("model", "train", "data")})
    loaded = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    # the command's own parameters, not its config groups (score's parameter `model` is no ModelConfig)
    own = {f.name for f in dataclasses.fields(cls)
           if not (isinstance(f.type, type) and dataclasses.is_dataclass(f.type))}
    try:
        built = configs(COMMANDS[name].function, {k: v for k, v in loaded.items() if k not in own})
    except ToolkitError as e:
        raise ToolkitError(f"{where}: {e}") from None
    hints = typing.get_type_hints(cls, include_extras=True)
    try:
        kwargs = {f.name: checked(f.name, hints[f.name], loaded[f.name]) if f.name in loaded
                  else tyro.MISSING if f.default is dataclasses.MISSING else f.default
                  for f in dataclasses.fields(cls) if f.name in own}
    except ToolkitError as e:
        raise ToolkitError(f"{where}: {e}") from None
    kwargs.update({GROUPS[type(b).__name__]: as_described(b) for b in built})
    return cls(**kwargs)


def _flat(tree: dict) -> dict:
    out: dict = {}
    for key, value in tree.items():
        out.update(_flat(value) if isinstance(value, dict) else {key: value})
    return out


def parse(argv: Sequence[str]) -> tuple[str, dict[str, Any], bool]:
    """(command, api keyword arguments, print the config instead of running)."""
    name, rest = argv[0], list(argv[1:])
    if name not in COMMANDS:
        raise ToolkitError(f"unknown command {show(name)}; commands: {', '.join(COMMANDS)}")
    old = [a for a in dict.fromkeys(rest) if a in OLD_SPELLINGS]
    clash = [(a, b) for a in old for b in old if a < b and OLD_SPELLINGS[a][0] == OLD_SPELLINGS[b][0]]
    if clash:
        raise ToolkitError(f"{name}: {clash[0][0]} and {clash[0][1]} contradict each other; pass one")
    rest = [tok for arg in rest for tok in OLD_SPELLINGS.get(arg, (arg,))]
    print_config = any(a in PRINT_FLAGS for a in rest)
    rest = [a for a in rest if a not in PRINT_FLAGS]
    cls, default = command_class(name), None
    if CONFIG_FLAG in rest:
        i = rest.index(CONFIG_FLAG)
        if i + 1 >= len(rest):
            raise ToolkitError("--config needs a YAML file")
        default = _defaults_from(rest[i + 1], cls, name)
        del rest[i:i + 2]
    return name, flatten(_tyro(cls, rest, name, default)), print_config


BOX = str.maketrans("", "", "╭╮╰╯│─━┃┏┓┗┛")


def _tyro(cls: type, args: list[str], name: str, default: Any) -> Any:
    """tyro's parse, its usage errors as one line like every other error (tyro draws them in a box
    over many lines and has no plain mode); --help as tyro prints it."""
    import contextlib
    import io

    import tyro

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return tyro.cli(cls, args=args, prog=f"toolkit {name}", default=default,
                            config=(tyro.conf.OmitArgPrefixes,))
    except SystemExit as e:
        if not e.code:
            sys.stderr.write(said.getvalue())
            raise
        lines = said.getvalue().splitlines()
        if lines and lines[0].startswith("╭"):  # the box's title repeats its first line
            lines = lines[1:]
        text = " ".join(" ".join(lines).translate(BOX).split())
        text = text.split(" For full helptext")[0].split(" Argument helptext:")[0].strip(" :") or "cannot parse the options"
        raise ToolkitError(f"toolkit {name}: {shorten(escape(text), 300)} (toolkit {name} --help: its options)") from None


# -- commands: call the api function, print its result ----------------------------------------------------
def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(name: str, options: dict[str, Any]) -> int:
    from toolkit import api

    func = getattr(api, COMMANDS[name].function)
    if "say" in inspect.signature(func).parameters:
        options = {**options, "say": print if name == "wise" else _say}
    result = func(**options)
    if name == "check":
        print("\n".join(result.lines()))
        return 0 if result.ok else 1
    if name == "eval":
        from toolkit.scoring.metrics import format_metrics

        print(f"{options['model']} on {options['data']}: {format_metrics(result)}")
        for group, m in result.get("groups", {}).items():
            print(f"  {group}: {format_metrics(m)}")
    elif name == "predict":
        print(f"{result:.4f}")
    elif name == "merge":
        print(f"merged model written to {result} (transformers loads {result}/model)")
    elif name == "score":
        _report_score(options["model"], result)
    elif name == "distill":
        student = result["student"]
        tested = f", test Spearman {100 * student['test']['spearman']:.2f}" if "test" in student else ""
        print(f"student written to {student['run']}: dev Spearman {100 * student['dev']['spearman']:.2f}{tested}")
    elif name == "shift-splits":
        for folder, files in result.items():
            print(f"{options['out']}/{folder}: " + ", ".join(f"{n} {c}" for n, c in files.items()))
    return 0


def _report_score(model: str, summary) -> None:
    for line in summary.skipped_report:
        _say(f"skipped: {line}")
    if summary.backend:
        _say(f"model: {model} on {summary.backend}")
    resumed = f", {summary.resumed_parts} parts resumed" if summary.resumed_parts else ""
    _say(f"scored {summary.written} pairs into {summary.output} ({summary.rows} rows read, {summary.bad} bad "
         f"skipped{resumed}) in {summary.seconds:.1f}s, {summary.rate:.0f} pairs/s")
    if summary.time_split():
        _say(summary.time_split())
    for kind, counts in summary.spread.items():
        _say(f"pairs per {kind[:-1]}: " + ", ".join(f"{key[:12]} {n}" for key, n in sorted(counts.items())))


def print_config(options: dict[str, Any]) -> None:
    """The resolved options as YAML that ``--config`` reads back (tuples as lists)."""
    import yaml

    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    sys.stdout.write(yaml.safe_dump(plain, sort_keys=False, allow_unicode=True))


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {n:<{width}}  {c.help}" for n, c in COMMANDS.items()]
    return ("usage: toolkit COMMAND [OPTIONS]   (toolkit COMMAND --help: its options; --config FILE.yaml, "
            "--print-config)\n\nAdapter fine-tuning for sentence-pair regression.\n\ncommands:\n" + "\n".join(lines))


def _rank_prefix() -> str:
    """Under a distributed launcher every process reports; rank 0's line reads as on one process."""
    rank = os.environ.get("RANK", "0")
    return f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 and rank != "0" else ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    try:
        name, options, show_config = parse(argv)
        if show_config:
            print_config(options)
            return 0
        return run(name, options)
    except ToolkitError as e:
        sys.stderr.write(_rank_prefix() + str(e) + "\n")  # one write: ranks' lines do not interleave
        sys.stderr.flush()
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except Exception as e:  # a bug, not bad input: one line unless asked for the traceback
        if os.environ.get("TOOLKIT_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"toolkit: internal error: {type(e).__name__}: {first} (TOOLKIT_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
