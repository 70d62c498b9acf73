"""``lightning-online``: the command line of online studies (a ``LightningCLI``).

::

    lightning-online recipes                      # the recipes shipped with the package
    lightning-online fit --config heat2d          # a shipped recipe, by name
    lightning-online fit --config recipes/heat2d.yaml
    lightning-online fit --config recipes/heat2d.yaml --trainer.max_steps=200 --data.n_simulations=32
    lightning-online fit --config recipes/heat2d.yaml --data.sampler=Breed --trainer.callbacks+=ActiveSampling
    lightning-online fit --config recipes/heat2d.yaml --print_config > my_study.yaml
    lightning-online validate --config recipes/heat2d.yaml --ckpt_path=runs/heat2d/.../last.ckpt

What differs from a plain ``LightningCLI``:

* The recipes ship in the package (``lightning_online/recipes/*.yaml``, the same files as the
  repository's ``recipes/``): ``--config NAME`` takes a recipe's name where no file ``NAME``
  exists, and ``lightning-online recipes`` lists them, one line each.
* A wrong option is told in one line, with the nearest known option (``--data.n_simulation``:
  did you mean ``--data.n_simulations``?), not after the whole usage.
* ``data`` is always an :class:`~lightning_online.OnlineDataModule`: its arguments sit directly
  under ``data:`` (``data.solver``, ``data.space``, ``data.n_simulations``, ...); ``model`` is
  any LightningModule, given by ``class_path``.
* ``monitor`` configures the :class:`~lightning_online.callbacks.monitor.StudyMonitor` callback, which is
  always on (the live view; e.g. ``--monitor.plot=false``). The progress bar is a
  :class:`~lightning_online.callbacks.monitor.StudyProgressBar` on a terminal and, where standard
  output is not one (a batch job's output file, a pipe), a
  :class:`~lightning_online.callbacks.progress.StudyProgressLog` (plain lines every 30 s; e.g.
  ``--trainer.callbacks+=StudyProgressLog --trainer.callbacks.every_n_steps=100``), unless
  ``trainer.callbacks`` has one (e.g. ``--trainer.callbacks+=RichStudyProgressBar``) or
  ``trainer.enable_progress_bar`` is false.
* Under DDP the ranks other than 0 keep Lightning's and torch's warnings and informational
  messages to themselves (rank 0 shows the same ones), and the per-simulation validation figures
  (``val_sim_loss_*``, identical on every rank by construction) are not flagged for
  ``sync_dist``: a job's output says each thing once.
* Config files are read with OmegaConf (``parser_mode="omegaconf"``), so a recipe can refer to
  one value from several places (``${data.solver.init_args.nx}``). The interpolations follow
  command-line overrides: ``--data.solver.init_args.nx=32`` also changes the model's
  ``field_shape`` that copies it in the file (unless the command line sets that too); the
  saved ``config.yaml`` and ``--print_config`` show the values used.
* Class names of this package work as shorthands: ``--data.sampler=Breed``,
  ``--data.buffer=FIFO``, ``--trainer.callbacks+=ActiveSampling``, ``--model=FNO1D``.
* ``torch_num_threads`` (default: automatic) limits torch's CPU threads so that training does not
  fight the solver processes for cores (see :func:`auto_num_threads`).
* The config of each ``fit`` is saved as ``config.yaml`` in the run's log folder, overwriting an
  older one.
* Started by ``mpiexec -n R`` (R > 1), the trainer gets Lightning's ``MPIEnvironment`` by
  default, so that ``mpiexec -n 2 lightning-online fit --config X.yaml --trainer.strategy=ddp
  --trainer.devices=2`` trains on 2 ranks (Lightning does not detect MPI by itself). Under SLURM
  (``srun``), Lightning's own ``SLURMEnvironment`` applies instead.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_only

# Imported so that their classes are known to the parser by their short names.
from lightning_online import models as _models  # noqa: F401
from lightning_online import solvers as _solvers  # noqa: F401
from lightning_online.buffers import FIFO, FIRO, Reservoir  # noqa: F401
from lightning_online.callbacks.active_sampling import ActiveSampling  # noqa: F401
from lightning_online.callbacks.monitor import RichStudyProgressBar, StudyMonitor, StudyProgressBar  # noqa: F401
from lightning_online.callbacks.progress import StudyProgressLog
from lightning_online.data import OnlineDataModule
from lightning_online.sampling.error_model import ErrorModel  # noqa: F401
from lightning_online.sampling.samplers import Halton, LatinHypercube, ParameterSpace, Uniform  # noqa: F401
from lightning_online.sampling.steering import Breed, LossProportional  # noqa: F401

__all__ = ["OnlineCLI", "auto_num_threads", "main", "mpi_world_size", "recipes"]

#: Where the shipped recipes are (package data).
RECIPES = Path(__file__).resolve().parent / "recipes"


def recipes() -> dict[str, Path]:
    """The recipes shipped with the package: ``{name: path}``, by name."""
    return {p.stem: p for p in sorted(RECIPES.glob("*.yaml"))}


def _recipe_line(path: Path, width: int = 60) -> str:
    """What a recipe studies, in at most ``width`` characters: the first clause of its first
    comment line (a steered variant says which recipe it steers), cut at a word."""
    comments = [x.lstrip("# ").strip() for x in path.read_text().splitlines() if x.startswith("#")]
    steered = next((x for x in comments if x.startswith("Steered version of")), None)
    if steered is not None:
        base = re.sub(r"Steered version of recipes/(\w+)\.yaml.*", r"\1", steered)
        text = f"{base}, steered by the loss (Breed + ActiveSampling)"
    else:
        text = re.split(r":\s|(?<=\)),\s", comments[0] if comments else "")[0]
        text = re.sub(r"recipes/(\w+)\.yaml", r"\1", text).rstrip(".")
    if len(text) > width:
        text = text[: width - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return text


def _list_recipes() -> str:
    found = recipes()
    width = max((len(n) for n in found), default=0)
    lines = [f"{name:<{width}}  {_recipe_line(path, 77 - width)}" for name, path in found.items()]
    lines.append("run one: lightning-online fit --config NAME (its file: --print_config)")
    return "\n".join(lines)


def _resolve_configs(argv: list[str]) -> list[str]:
    """``--config NAME`` / ``-c NAME`` / ``--config=NAME`` with a shipped recipe's name (and no
    such file here) becomes that recipe's path; a name that is neither is refused in one line
    with the nearest recipe names."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in ("--config", "-c") and i + 1 < len(out):
            j, value, prefix = i + 1, out[i + 1], ""
        elif arg.startswith("--config="):
            j, value, prefix = i, arg.partition("=")[2], "--config="
        else:
            continue
        if os.path.exists(value) or value.lstrip().startswith(("{", "[")) or "\n" in value:
            continue
        name = Path(value).name.removesuffix(".yaml").removesuffix(".yml")
        found = recipes()
        if name in found and os.sep not in value.rstrip(os.sep).removeprefix("recipes/"):
            out[j] = prefix + str(found[name])
            continue
        near = difflib.get_close_matches(name, list(found), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        raise SystemExit(
            f"error: --config {value}: no such file, nor a recipe of the package{hint} "
            "(lightning-online recipes lists them)"
        )
    return out


class OnlineArgumentParser(LightningArgumentParser):
    """The CLI's parser: an error is one line, with the nearest option for a misspelt one,
    instead of the whole usage."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        known = _option_names(parser)
        hints = []
        for wrong in dict.fromkeys(re.findall(r"(--[\w.\-]+)", message)):
            if wrong in known:
                continue
            near = difflib.get_close_matches(wrong, known, n=1, cutoff=0.75)
            if near:
                hints.append(f"{wrong}: did you mean {near[0]}?")
        lines = message.strip().splitlines() or ["bad arguments"]
        prog = parser.prog.replace(" [options]", "")
        help_hint = f"({prog} --help lists the options)"
        if hints:
            sys.stderr.write(f"error: {lines[0]}; {' '.join(hints)} {help_hint}\n")
        else:  # the problem and its detail, without the usage
            detail = [x.strip() for x in lines[1:21] if x.strip()]
            sys.stderr.write("\n  ".join([f"error: {lines[0]}", *detail]) + f"\n{help_hint}\n")
        sys.exit(2)


def _option_names(parser: Any) -> list[str]:
    """Every option string of ``parser`` and of its subcommands' parsers."""
    names = [s for s in getattr(parser, "_option_string_actions", {}) if s.startswith("--")]
    for action in getattr(parser, "_actions", []):
        for sub in (getattr(action, "_name_parser_map", None) or {}).values():
            names += _option_names(sub)
    return sorted(set(names))


#: jsonargparse parser mode of the CLI: YAML with OmegaConf interpolation.
PARSER_MODE = "omegaconf"


def auto_num_threads(n_workers: int) -> int | None:
    """Torch CPU threads that leave one core per solver worker: ``cores - n_workers`` (>= 1).

    ``None`` (leave torch alone) when ``OMP_NUM_THREADS`` is set or torch already uses fewer.
    Torch's OpenMP threads spin while they wait; on a machine whose cores are busy with solver
    processes, that makes every training step many times slower.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    n = max(1, cores - max(0, int(n_workers)))
    return n if n < torch.get_num_threads() else None


def mpi_world_size() -> int:
    """Processes of the MPI job that started this one (1 when not started by an MPI launcher),
    read from the launcher's environment so that MPI itself is not initialised here."""
    # MPICH (hydra) and Intel MPI, Open MPI, MVAPICH2
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


class OnlineCLI(LightningCLI):
    """``LightningCLI`` for online studies: an ``OnlineDataModule``, any model, a ``StudyMonitor``.

    Takes the arguments of ``LightningCLI``; by default ``datamodule_class`` is
    ``OnlineDataModule`` (not in subclass mode), ``model_class`` any LightningModule (subclass
    mode), the parser mode ``omegaconf`` and configs are saved with ``overwrite=True``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("datamodule_class", OnlineDataModule)
        kwargs.setdefault("parser_class", OnlineArgumentParser)
        kwargs.setdefault("subclass_mode_data", False)
        parser_kwargs = dict(kwargs.pop("parser_kwargs", None) or {})
        parser_kwargs.setdefault("parser_mode", PARSER_MODE)
        parser_kwargs.setdefault("allow_abbrev", False)  # jsonargparse 5 default; no warnings
        kwargs["parser_kwargs"] = parser_kwargs
        save_kwargs = dict(kwargs.pop("save_config_kwargs", None) or {})
        save_kwargs.setdefault("overwrite", True)
        kwargs["save_config_kwargs"] = save_kwargs
        defaults = dict(kwargs.pop("trainer_defaults", None) or {})
        # The stream is one epoch that ends with the study: no epoch limit (Lightning would
        # otherwise warn that it sets one of 1000 when a recipe leaves max_steps at -1).
        defaults.setdefault("max_epochs", -1)
        if mpi_world_size() > 1 and "SLURM_NTASKS" not in os.environ:
            # A class path, not an instance: the saved config.yaml must stay serialisable.
            mpi_env = {"class_path": "lightning.pytorch.plugins.environments.MPIEnvironment"}
            defaults.setdefault("plugins", [mpi_env])
        kwargs["trainer_defaults"] = defaults
        self.torch_num_threads: int | None = None
        threads = torch.get_num_threads()
        try:
            super().__init__(*args, **kwargs)  # runs the subcommand, unless run=False
        finally:
            # torch's thread count is the process's: the CLI's holds for what the CLI runs,
            # then the one found is back (with run=False, apply cli.torch_num_threads yourself)
            torch.set_num_threads(threads)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse as ``LightningCLI`` does, with the config files' interpolations following the
        command line's overrides: a first parse finds the values they take with the overrides,
        a second one adds those as explicit options (so ``--print_config``, validation and the
        saved ``config.yaml`` see them). Training process, every rank, before anything is built.
        """
        argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None
        if argv is None or any(not isinstance(a, str) for a in argv):
            super().parse_arguments(parser, args)
            return
        resolved = _resolve_configs(argv)
        if resolved != argv:  # a recipe by name: parse its path (as given on the command line)
            argv, args = resolved, resolved if args is not None else None
            if args is None:
                sys.argv[1:] = resolved
        printing = [a for a in argv if a == "--print_config" or a.startswith("--print_config=")]
        rest = [a for a in argv if a not in printing]
        if args is None and printing:  # as from the shell, without --print_config
            self.config = parser.parse_args(rest)
        else:
            super().parse_arguments(parser, rest if printing else args)
        subcommand = self.config.get("subcommand")
        cfg = self.config[subcommand] if subcommand else self.config
        changes = _follow_interpolations(_config_files(rest), cfg.as_dict())
        if changes or printing:
            extra = [f"--{key}={json.dumps(value)}" for key, value in changes.items()]
            self.config = parser.parse_args([*argv, *extra])

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(StudyMonitor, "monitor")
        parser.add_argument(
            "--torch_num_threads",
            type=int | None,
            default=None,
            help="CPU threads of torch in the training process; null: all cores minus one per "
            "solver worker (unless OMP_NUM_THREADS is set)",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        n = config.get("torch_num_threads")
        if n is None:
            n = auto_num_threads(config.get("data", {}).get("n_workers", 0) or 0)
        elif n < 1:
            raise ValueError(f"torch_num_threads must be a positive integer, got {n}")
        if n is not None:
            self.torch_num_threads = int(n)
            torch.set_num_threads(int(n))  # until the CLI returns (see __init__)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with a :class:`StudyProgressBar` (a terminal) or a
        :class:`StudyProgressLog` (anything else) when its config shows a progress bar and names
        none itself (training process, every rank)."""
        if "callbacks" not in kwargs:
            init = self.config_init[self.subcommand] if self.subcommand else self.config_init
            trainer = init.get("trainer") or {}
            given = trainer.get("callbacks")
            callbacks = [] if given is None else list(given) if isinstance(given, list) else [given]
            shown = trainer.get("enable_progress_bar") is not False
            if shown and not any(isinstance(c, ProgressBar) for c in callbacks):
                bar = StudyProgressBar() if _is_terminal(sys.stdout) else StudyProgressLog()
                kwargs["callbacks"] = [*callbacks, bar]
        return super().instantiate_trainer(**kwargs)


def _is_terminal(stream: Any) -> bool:
    """Whether a progress bar's redraws can be shown on ``stream`` (tqdm draws on stdout)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _one_voice() -> None:
    """What this process (the ``lightning-online`` command owns it) shows once per job, not once
    per rank: on ranks other than 0 (Lightning's rank, from the environment of ``srun``,
    ``mpiexec`` or its own launcher), Lightning's and torch's warnings and informational log
    messages, which rank 0 shows as well; on every rank, Lightning's advice to ``sync_dist`` the
    per-simulation validation figures, which are identical on every rank by construction."""
    warnings.filterwarnings(
        "ignore", message=r"It is recommended to use `self\.log\('val_sim_loss_", category=Warning
    )
    rank = getattr(rank_zero_only, "rank", 0) or 0  # Lightning's: RANK, SLURM_PROCID, ...
    for key in ("PMI_RANK", "OMPI_COMM_WORLD_RANK"):  # mpiexec, which Lightning does not read
        if not rank and os.environ.get(key, "").isdigit():
            rank = int(os.environ[key])
    if rank == 0:
        return
    for module in (r"lightning(\..*)?$", r"lightning_fabric(\..*)?$", r"torch(\..*)?$"):
        warnings.filterwarnings("ignore", module=module)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _config_files(argv: list[str]) -> list[str]:
    """The files given with ``--config FILE`` / ``--config=FILE`` / ``-c FILE``, in order."""
    files = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.partition("=")[2])
    return [f for f in files if os.path.isfile(f)]


def _interpolations(node: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], str]:
    if isinstance(node, dict):
        return {p: e for k, v in node.items() for p, e in _interpolations(v, (*path, k)).items()}
    if isinstance(node, list):
        return {p: e for i, v in enumerate(node) for p, e in _interpolations(v, (*path, i)).items()}
    return {path: node} if isinstance(node, str) and "${" in node else {}


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        node = node[key]
    return node


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    return node if node is None or isinstance(node, str | int | float | bool) else str(node)


def _follow_interpolations(files: list[str], final: dict[str, Any]) -> dict[str, Any]:
    """New values for the places of ``final`` (a parsed config) that the config ``files`` fill
    by OmegaConf interpolation, re-resolved against ``final`` so that they follow command-line
    overrides; a place the command line set itself is kept. Returns ``{dotted key: value}``
    (an interpolation inside a list gives the whole list). Training process, at parsing."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    changes: dict[str, Any] = {}
    for file in files:
        with open(file) as f:
            raw = yaml.safe_load(f)
        found = _interpolations(raw)
        if not isinstance(raw, dict) or not found:
            continue
        try:
            as_read = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
        except OmegaConfBaseException:
            continue
        redo = _plain(final)
        for path, expr in found.items():
            try:
                if _get(redo, path) != _get(as_read, path):
                    continue  # set on the command line (or by a later file): keep it
                _get(redo, path[:-1])[path[-1]] = expr
            except (KeyError, IndexError, TypeError):
                continue
        try:
            resolved = OmegaConf.to_container(OmegaConf.create(redo), resolve=True)
        except OmegaConfBaseException:
            continue
        for path in found:
            # the whole list when the interpolation is one of its items
            cut = next((i for i, k in enumerate(path) if isinstance(k, int)), len(path))
            key = path[:cut]
            try:
                new, old = _get(resolved, key), _get(_plain(final), key)
            except (KeyError, IndexError, TypeError):
                continue
            if new != old:
                changes[".".join(map(str, key))] = new
                _get(final, key[:-1])[key[-1]] = new  # seen by the next file
    return changes


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-online`` console script (``args``: default ``sys.argv``)."""
    given = list(sys.argv[1:] if args is None else args)
    if given[:1] == ["recipes"]:
        print(_list_recipes())
        return
    _one_voice()
    OnlineCLI(args=args)
    # Ranks started by mpiexec or srun exit here, not in Lightning's launcher: a process group
    # left for the interpreter's teardown can abort in gloo's threads ("terminate called without
    # an active exception"), and an MPI process manager answers an aborted rank by killing the job.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
