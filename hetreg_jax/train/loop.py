"""The run: restore or initialise, the training loop (logging, validation, finiteness checks,
checkpoints, Ctrl-C), then the test evaluation; and ``--mode=eval``.

The algorithm itself, the pure jitted steps, is in ``step.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hetreg_jax.base import sharding
from hetreg_jax.base import workdir as workdir_lib
from hetreg_jax.base.errors import InputError, MissingFileError, NonFiniteError
from hetreg_jax.base.interrupt import Interrupted, StopRequest
from hetreg_jax.base.progress import Progress, print_summary, say
from hetreg_jax.base.writers import MetricWriter
from hetreg_jax.baselines import elastix
from hetreg_jax.config.check import validate_config
from hetreg_jax.core import methods
from hetreg_jax.data import pipeline
from hetreg_jax.evaluate import evaluation, figures
from hetreg_jax.train import state as ts
from hetreg_jax.train.checkpoint import Checkpointer, NoSpace, complete_steps
from hetreg_jax.train.feed import Feed, SeedFeed, chunk_end
from hetreg_jax.train.step import HPARAMS, Trainer


def check_finite(step: int, phase: str, measures: dict,
                 kept: str = "the last good checkpoint is kept") -> None:
    """Stop the run on a non-finite loss or gradient, naming the step, the phase and the term."""
    bad = [k for k, v in measures.items() if k != "all_finite" and not np.isfinite(v)]
    if bad:
        raise NonFiniteError(f"non-finite {', '.join(bad)} at step {step} (phase {phase}); {kept}")


def check_pending(pending: list, kept: str) -> dict:
    """Check the measurements of every step since the last check, in order, after one transfer.

    ``pending`` holds ``(first step, phase, device measures, count, row)`` as `feed.Feed`
    returns them: scalars (one step; ``count`` None) or stacked ``[K]`` (``count`` valid steps from
    ``first step`` on), ``[runs, K]`` for runs trained together (this run's ``row``); the slicing
    happens here, on the host. The first non-finite step raises (`check_finite`). Returns the
    last step's measures as floats.
    """
    host = jax.device_get([item[2] for item in pending])
    last = {}
    for (first, phase, _, count, row), measures in zip(pending, host):
        if row is not None:
            measures = {k: v[row] for k, v in measures.items()}
        for i in range(1 if count is None else count):
            last = {k: (v if count is None else v[i]) for k, v in measures.items()}
            check_finite(first + i, phase, last, kept)
    return {k: float(v) for k, v in last.items()}


@jax.jit
def params_finite(state: ts.TrainState) -> jax.Array:
    """Whether every parameter of both networks is finite (checked before each checkpoint)."""
    leaves = jax.tree.leaves((state.motion_params, state.variance_params))
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _classical(config) -> bool:
    """Whether ``config.method`` trains no network (``method="elastix"``)."""
    return not methods.get_method(config.method).trainable


def _checkpoint_meta(config, step: int) -> dict:
    return {"step": int(step), "model": config.model, "method": config.method,
            "image_size": list(config.data.image_size)}


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The gist of a (possibly long, multi-line) library error: its first sentence, or a heading
    ending in ':' with the line after it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    text = lines[0].split(". ")[0]
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    return text if len(text) <= limit else text[:limit] + "..."


def restore_or_init(trainer: Trainer, ckpt, config, abstract: Any = None) -> ts.TrainState:
    """The latest complete checkpoint's state if there is one, else a fresh one.

    A checkpoint of another model, method or image size (its meta record), or whose parameter tree
    does not match this config's networks (e.g. other feature widths), raises a one-line
    ``InputError`` naming the checkpoint folder and both values.
    """
    step = ckpt.latest_step()
    if step is None:
        return trainer.init_state()
    where, advice = ckpt.step_dir(step), "use the config it was trained with or another --workdir"
    abstract = trainer.abstract_state() if abstract is None else abstract
    errors = (ValueError, KeyError, TypeError, OSError)  # orbax's, often many lines long
    try:
        meta, mismatches = ckpt.restore_meta(step), ckpt.mismatches(abstract, step)
    except errors as exc:
        raise InputError(f"cannot read checkpoint {where} ({_first_line(exc)}); {advice}") from exc
    expected = _checkpoint_meta(config, step)
    for key in ("model", "method", "image_size"):
        if meta.get(key) != expected[key]:
            raise InputError(f"checkpoint {where} was trained with {key}={meta.get(key)!r}, but the "
                             f"config has {key}={expected[key]!r}; {advice}")
    if mismatches:
        more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        raise InputError(f"checkpoint {where} does not match the networks of this config: "
                         f"{mismatches[0]}{more}; {advice}")
    try:
        return ckpt.restore(abstract, step)[0]
    except errors as exc:
        raise InputError(f"cannot restore checkpoint {where} ({_first_line(exc)}); {advice}") from exc


def load_checkpoint(trainer: Trainer, config, workdir: str, abstract: Any = None) -> ts.TrainState:
    """The latest complete checkpoint of ``workdir`` (read-only); ``MissingFileError`` if none."""
    ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not complete_steps(ckpt_dir):
        raise MissingFileError(f"no checkpoint in {ckpt_dir}: train first (--mode=train)")
    ckpt = Checkpointer(ckpt_dir, keep=config.keep_checkpoints, create=False)
    try:
        return restore_or_init(trainer, ckpt, config, abstract)
    finally:
        ckpt.close()


def _prepare(config, mesh) -> tuple[dict, Trainer, Any]:
    """Everything that can fail without touching the workdir: config, data, networks, batch split.

    Returns the splits, the trainer and the abstract state; tracing the networks' initialisation
    (``abstract_state``) surfaces network settings they cannot take (any image size is padded).
    """
    validate_config(config)
    data = config.data
    source = data.root or f"built-in {data.dataset} phantoms"
    say(f"loading data: {source}, {'x'.join(map(str, data.image_size))} ...")
    splits = pipeline.load_splits(config)
    say("data: " + ", ".join(f"{pipeline.num_pairs(splits[name])} {name}" for name in pipeline.SPLITS) + " pairs")
    trainer = Trainer(config, mesh)
    sharding.check_batch_size(config.batch_size, trainer.mesh)
    say(f"networks: {config.model} ({config.method}) on {trainer.mesh.devices.size} "
        f"{trainer.mesh.devices.flat[0].platform.upper()} device(s)")
    return splits, trainer, trainer.abstract_state()


def train_and_evaluate(config, workdir: str, mesh: jax.sharding.Mesh | None = None,
                       allow_config_change: bool = False) -> dict:
    """Train (resuming from the latest complete checkpoint in ``workdir``), then evaluate on the test split.

    Order: every check that needs no workdir (`_prepare`) runs first; then the workdir is
    locked, the config compared with the recorded one (``allow_config_change`` accepts restricted
    changes, see `hetreg_jax.base.workdir`) and the checkpoint with the config. Only then is anything
    written: the lock holder, the config record, the removal of half-written checkpoints and of
    metric records past the resumed step. A refused run leaves the workdir as it was.
    Returns the test summary that is also written to ``workdir/eval/test_metrics.json``.
    """
    if _classical(config):  # elastix: no network; registers the test pairs and writes the same reports
        return elastix.evaluate(config, workdir, allow_config_change=allow_config_change)
    return train_and_evaluate_together([config], [workdir], mesh, allow_config_change)[0]


def same_but_hparams(configs) -> str | None:
    """Why ``configs`` cannot be trained in one program, or None: they must differ only in the traced
    hyper-parameters (`steps.HPARAMS`: the seed, γ, β, λ, the learning rates, ...)."""
    def rest(config):
        flat = workdir_lib.flatten(config.to_dict())
        for key in HPARAMS.values():
            flat.pop(key, None)
        return flat

    first = rest(configs[0])
    for config in configs[1:]:
        other = rest(config)
        differ = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
        if differ:
            return f"the runs differ in {', '.join(differ[:3])}{' ...' if len(differ) > 3 else ''}"
    return None


def train_and_evaluate_together(configs, workdirs, mesh: jax.sharding.Mesh | None = None,
                                allow_config_change: bool = False) -> list[dict]:
    """Train several runs that differ only in their traced hyper-parameters (seeds; see
    `same_but_hparams`) in one program, then evaluate each: one run is
    `train_and_evaluate`. Each run keeps its own workdir, config record, checkpoints, metrics,
    validation and evaluation, laid out as if trained alone, and resumes alone or together; the runs
    must be at the same step (all fresh, or interrupted together). Their states are stacked and the
    chunk of steps ``jax.vmap``-ped over them (`feed.SeedFeed`); per run, the numbers equal a
    run trained alone to float rounding. Returns the test summaries, in order.
    """
    import contextlib

    if len(configs) != len(workdirs) or not configs:
        raise ValueError("train_and_evaluate_together needs one workdir per config")
    for config in configs:
        pipeline.refuse_all_split(config)
    if len(configs) > 1:
        why = same_but_hparams(configs)
        if why or any(_classical(c) for c in configs):
            raise InputError(f"cannot train these runs together: {why or 'elastix trains no network'}")
        if len(set(map(os.path.abspath, workdirs))) != len(workdirs):
            raise InputError("cannot train these runs together: two of them share a workdir")
    prepared = [_prepare(c, mesh) for c in configs]
    lead = jax.process_index() == 0
    members, states = [], []
    with contextlib.ExitStack() as stack:
        for config, workdir, (splits, trainer, abstract) in zip(configs, workdirs, prepared):
            lock = stack.enter_context(workdir_lib.WorkdirLock(workdir, enabled=lead))
            changes = workdir_lib.config_changes(config, workdir, allow_config_change)
            ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                                asynchronous=background_checkpoints(config, trainer.mesh))
            stack.callback(ckpt.close)
            state = restore_or_init(trainer, ckpt, config, abstract)
            start = int(jax.device_get(state.step))
            if start > config.num_steps:
                raise InputError(f"the latest checkpoint in {ckpt.directory} is at step {start}, past "
                                 f"config.num_steps={config.num_steps}; raise num_steps or use --mode=eval")
            label = f"seed {config.seed}" if len(configs) > 1 else ""
            members.append((_Member(config, workdir, trainer, splits, ckpt, label), lock, changes, start))
            states.append(state)
        starts = sorted({start for *_, start in members})
        if len(starts) > 1:
            raise InputError(f"cannot train these runs together: their checkpoints are at steps "
                             f"{', '.join(map(str, starts))}; resume them one at a time")
        start = starts[0]
        for member, lock, changes, _ in members:
            if lead:
                lock.claim()
                workdir_lib.record_config(member.config, member.workdir, changes, start)
                member.ckpt.remove_incomplete()
                workdir_lib.trim_metrics(member.workdir, start)
            if changes:
                say(f"{member.label}: " * bool(member.label) + "config changed: "
                    + "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in changes.items()))
        if start:
            say(f"resuming from step {start} ({', '.join(m.ckpt.directory for m, *_ in members)})")
        runs = [member for member, *_ in members]
        if len(runs) == 1:
            feed, state = Feed(runs[0].trainer, runs[0].splits["train"], runs[0].config), states[0]
        else:
            feed = SeedFeed([m.trainer for m in runs], [m.splits["train"] for m in runs], configs)
            state = feed.stack(states)
        del states
        state = _train_loop(runs, state, start, feed)
        for m, *_ in members:
            m.ckpt.close()
        summaries = []
        for i, m in enumerate(runs):
            say(f"{m.label}: " * bool(m.label) + "evaluating the test split ...")
            outdir = os.path.join(m.workdir, "eval")
            summary = evaluation.evaluate(m.trainer, feed.member_state(state, i), m.splits["test"], m.config, outdir)
            if lead:
                figures.training_curves(os.path.join(m.workdir, "metrics.jsonl"), os.path.join(outdir, "curves.png"))
            summaries.append((summary, outdir))
    for summary, outdir in summaries:
        print_summary(summary, outdir)
    return [summary for summary, _ in summaries]


@dataclasses.dataclass
class _Member:
    """One run of a training loop: its config, workdir, trainer, splits, checkpointer and writers."""
    config: Any
    workdir: str
    trainer: Trainer
    splits: dict
    ckpt: Any
    label: str = ""
    writer: Any = None
    progress: Any = None
    saved: int | None = None
    pending: list = dataclasses.field(default_factory=list)


def _train_loop(members: list, state, start: int, feed):
    """Steps ``start .. num_steps``: log, validate, check finiteness, checkpoint; the final state.

    ``members`` are the runs whose (stacked) state ``feed`` advances: one, or several trained
    together (`feed.SeedFeed`), each logged, validated and checkpointed into its own workdir
    at the same steps as alone. Measurements stay on the device between checks; at every logged,
    validated or checkpointed step all of them since the last check are fetched and checked in
    order, so the first non-finite step is named exactly (with its run). No checkpoint is written
    after a non-finite step or with non-finite parameters. At most ``sharding.MAX_IN_FLIGHT`` steps
    are dispatched ahead of the devices. Ctrl-C or SIGTERM saves a checkpoint of the current step
    and raises `Interrupted`; a full disk raises a one-line ``OSError`` naming the last good
    checkpoint.
    """
    config, trainer = members[0].config, members[0].trainer
    say(feed.reason)
    say(f"compiling the training step, then training to step {config.num_steps} (progress every "
        f"{config.log_every} steps) ...")
    for m in members:
        m.writer = MetricWriter(m.workdir, start_step=start)
        m.progress = Progress(config.num_steps, start, config.batch_size)
        m.saved = start or None
    in_flight = sharding.InFlight()
    try:
        with StopRequest() as stop:
            done = start
            while done < config.num_steps:
                phase = trainer.phase(done)
                end = chunk_end(config, trainer.phase, done, config.steps_per_call if feed.on_device else 1)
                state, measured = feed.run(state, done, end, phase)
                in_flight.push([item[2] for items in measured for item in items])
                for m, items in zip(members, measured):
                    m.pending += items
                done = end
                last = done == config.num_steps
                # Read once: a Ctrl-C or SIGTERM arriving while this step is logged or saved is acted
                # on at the next step, which then saves before stopping (never a stop without its
                # checkpoint). Several processes agree here, so all of them stop at the same step.
                stopping = stop.agreed()
                log = done % config.log_every == 0 or last or stopping
                save = done % config.checkpoint_every == 0 or last or stopping
                validate = bool(config.eval_every) and done % config.eval_every == 0 and not stopping
                if not (log or save or validate):
                    continue
                for i, m in enumerate(members):
                    _check_log_save(m, feed.member_state(state, i), done, phase, log, save, validate,
                                    wait=last or stopping)
                if stopping and not last:
                    raise Interrupted(done, members[0].saved, members[0].ckpt.directory)
    finally:
        for m in members:
            if m.writer is not None:
                m.writer.close()
    return state


def background_checkpoints(config, mesh) -> bool:
    """Whether checkpoints are written in the background (``config.checkpoint_async``): ``auto``
    means on a GPU or TPU; never with several processes, where every process takes part in a save."""
    mode = config.get("checkpoint_async", "auto")
    if jax.process_count() > 1 or mode == "off":
        return False
    return mode == "on" or mesh.devices.flat[0].platform != "cpu"


def _kept(m: _Member) -> str:
    kept = (f"the last good checkpoint (step {m.saved}) is kept in {m.ckpt.directory}" if m.saved
            else "no checkpoint was written")
    return f"{kept} ({m.label})" if m.label else kept


def _check_log_save(m: _Member, state, done: int, phase: str, log: bool, save: bool, validate: bool,
                    wait: bool = True) -> None:
    """One run's share of a check point of the loop: check, record, log, validate, checkpoint. A
    checkpoint written in the background at the previous check point is confirmed first; with
    ``wait`` (the last step, a stop) this one is confirmed before returning."""
    try:
        m.ckpt.finish()
    except NoSpace as exc:
        raise NoSpace(f"{exc}; {_kept(m)}; free some space and rerun the same command to resume") from None
    m.saved = m.ckpt.confirmed or m.saved
    kept = _kept(m)
    measures, m.pending = check_pending(m.pending, kept), []
    m.writer.write(done, measures)
    if log:
        say(f"{m.label}: " * bool(m.label) + m.progress.line(done, phase, measures))
    if validate:
        def draw(pairs, pred, step=done):
            m.writer.figure(step, "validation/examples", figures.example_figure(pairs, pred))
        dice, structure = evaluation.validation_dice(m.trainer, state, m.splits["val"], m.config, draw)
        if math.isfinite(dice):
            m.writer.write(done, {"val_dice": dice})
        say(f"{m.label}: " * bool(m.label) + f"step {done}: validation Dice ({structure}) {dice:.2f}%")
    if save:
        if not bool(params_finite(state)):
            raise NonFiniteError(f"non-finite parameters after step {done} (phase {phase}); {kept}")
        try:
            m.ckpt.save(done, state, _checkpoint_meta(m.config, done), wait=wait)
        except NoSpace as exc:
            raise NoSpace(f"{exc}; {kept}; free some space and rerun the same command to resume") from None
        m.saved = m.ckpt.confirmed or m.saved


def evaluate_checkpoint(config, workdir: str, mesh: jax.sharding.Mesh | None = None,
                        out: str | None = None) -> dict:
    """Evaluate the latest checkpoint of ``workdir`` on the test split (``--mode=eval``).

    The reports go to ``out`` (default ``workdir/eval``), so a run on a read-only disk can be
    evaluated elsewhere, or on other data: ``out`` then also holds the evaluated ``config.json``
    (its data and seed), which ``compare`` reads. Refused, leaving the workdir as it was, while
    another process holds the workdir ("in use", checked first), when there is no complete
    checkpoint, when the report folder cannot be written, when the checkpoint belongs to another
    model/method/size, or when ``config`` tests other pairs than the run's own test split (another
    ``data.*``, ``seed`` or ``eval.split``) without ``out``, which would overwrite the run's own reports.
    """
    validate_config(config)
    other = workdir_lib.evaluated_data_changes(config, workdir) if os.path.isdir(workdir) else {}
    if other and not out:
        listing = "; ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in other.items())
        raise InputError(f"--mode=eval of {os.path.abspath(workdir)} on other data than its own test split "
                         f"({listing}) needs --out=DIR, so that its reports in eval/ stay those of its run")
    if _classical(config):  # elastix has no checkpoint: --mode=eval registers the test pairs again
        return _record_evaluated(config, out, elastix.evaluate(config, workdir, out=out, record=False))
    ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
    no_checkpoint = f"no checkpoint in {ckpt_dir}: train first (--mode=train)"
    if not os.path.isdir(workdir):
        raise MissingFileError(no_checkpoint)
    lead = jax.process_index() == 0
    with workdir_lib.WorkdirLock(workdir, enabled=lead, read_only=True):
        if not complete_steps(ckpt_dir):
            raise MissingFileError(no_checkpoint)
        outdir = out or os.path.join(workdir, "eval")
        if lead:
            workdir_lib.check_writable(outdir, "--out" if out else "--workdir")
        splits, trainer, abstract = _prepare(config, mesh)
        state = load_checkpoint(trainer, config, workdir, abstract)
        say(f"evaluating the checkpoint of step {int(jax.device_get(state.step))} on the test split ...")
        tested = pipeline.evaluated(splits, config)
        if config.eval.split == "all":
            say(f"eval.split='all': scoring all {pipeline.num_pairs(tested)} pairs of {config.data.root or 'the phantoms'}")
        summary = evaluation.evaluate(trainer, state, tested, config, outdir)
    print_summary(summary, outdir)
    return _record_evaluated(config, out, summary)


def _record_evaluated(config, out: str | None, summary: dict) -> dict:
    """Beside reports written to ``out``, the config they evaluated (``config.json``)."""
    if out and jax.process_index() == 0:
        workdir_lib.atomic_write_text(os.path.join(out, workdir_lib.CONFIG_NAME),
                                      config.to_json_best_effort(indent=2, sort_keys=True))
    return summary
