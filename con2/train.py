"""The Con2 training loop (METHOD section 6).

AdamW + per-step cosine schedule + alpha annealed linearly 0 -> 1; optional bf16 autocast
on the GPU; atomic checkpoints that resume exactly (step, LR, alpha, optimizer, RNG);
DDP under torchrun with the same global-batch semantics as one process.

Writes a run directory (con2.run): config.json, metrics.jsonl, checkpoint.pt (resumable), and at
the end model.safetensors + model.json (the trained Con2Model).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shlex
import signal
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from . import __version__
from .config import TrainConfig
from .data import OneClassSplit, load_split
from .data.sources import make_batch_source, resolve_pipeline
from .data.workers import VIEW_SEEDS
from .distributed import convert_batchnorm
from .files import folder_lock, nearest_folder, read_json, replacing, write_text
from .losses import con2_loss, content_only_loss, context_only_loss, simclr_loss, view_labels
from .model import Con2Model
from .progress import PLAIN_EVERY_S, duration_text
from .stop import Stopped, interruption, stop_signals
from .run import (build_model, context_set, data_fingerprint, fingerprints_differ, identity_mismatch, resolve_device,
                  run_finished, save_model, split_as_trained, view_config)

CHECKPOINT_FORMAT = "con2-checkpoint/1"
CHECKPOINT_KEYS = ("config", "model", "optimizer", "global_step", "rng")  # what a resume reads
CHECKPOINT_FILE = "checkpoint.pt"  # in the run directory, from the first checkpoint on (kept at the end)
LOG_EVERY = 10  # steps between metrics lines inside an epoch


def objective_loss(cfg: TrainConfig, z_context, z_content, context_labels, sample_ids, alpha):
    if cfg.objective == "con2":
        return con2_loss(z_context, z_content, context_labels, sample_ids, alpha, cfg.temperature)
    if cfg.objective == "context":
        return context_only_loss(z_context, context_labels, cfg.temperature)
    if cfg.objective == "content":
        return content_only_loss(z_content, sample_ids, cfg.temperature)
    return simclr_loss(z_content, sample_ids, cfg.temperature)


def check_trained_model(model: Con2Model, views: torch.Tensor, amp: bool, agree=bool) -> None:
    """Refuse to save a model that cannot score: finite losses can still leave BatchNorm running
    statistics (used in eval mode, never in the loss) so large that every representation is NaN.
    agree(found): whether any DDP process found a problem (each encodes its own views; a rank that
    stopped alone would leave the others waiting in an all-reduce)."""
    state = [*model.named_parameters(), *model.named_buffers()]
    bad = next((f"{name} is not finite" for name, t in state if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is None:
        was_training = model.training
        model.eval()
        with torch.autocast(views.device.type, dtype=torch.bfloat16, enabled=amp):
            finite = bool(torch.isfinite(model.encode(views[:64])).all())
        model.train(was_training)
        bad = None if finite else "the eval-mode representations are not finite (BatchNorm running statistics blew up)"
    if agree(bad is not None):
        raise FloatingPointError(f"training diverged: {bad or 'on another DDP process'}, so the model cannot score; "
                                 "lower --lr")


def schedule(cfg: TrainConfig, step: int, total: int) -> tuple[float, float]:
    """(learning rate, alpha) at a global step: cosine annealing and a linear 0 -> 1 ramp."""
    frac = step / max(1, total)
    lr = 0.5 * cfg.lr * (1 + math.cos(math.pi * frac))
    alpha = step / max(1, total - 1)
    return lr, min(1.0, alpha)


# --------------------------------------------------------------------------- distributed

def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _gather_projections(z_context, z_content, n_local, n_contexts, offset, world):
    """All ranks' projections (autograd-aware) and the matching global labels."""
    ctx, ids = view_labels(n_local, n_contexts, device=z_context.device)
    ids = ids + offset
    if world == 1:
        return z_context, z_content, ctx, ids
    from torch.distributed.nn.functional import all_gather

    zc = torch.cat(all_gather(z_context))
    zs = torch.cat(all_gather(z_content))
    labels = [torch.empty_like(ctx) for _ in range(world)]
    dist.all_gather(labels, ctx)
    sample = [torch.empty_like(ids) for _ in range(world)]
    dist.all_gather(sample, ids)
    return zc, zs, torch.cat(labels), torch.cat(sample)


# --------------------------------------------------------------------------- checkpoints

def _refuse_foreign_files(run_dir: Path) -> None:
    """A training from step 0 writes config.json and metrics.jsonl into --out: refuse to replace
    ones that con2 did not write (a project folder given as --out), naming them, before any work."""
    config = run_dir / "config.json"
    if (run_dir / "manifest.json").is_file():
        raise FileExistsError(f"{run_dir} is a con2 sweep folder; train into another --out (its runs are its "
                              "class-*-seed* sub-folders)")
    if config.is_file():
        try:
            saved = read_json(config)
            TrainConfig.from_dict(saved)
            ours = "dataset" in saved
        except (ValueError, TypeError):
            ours = False
        if not ours:
            raise FileExistsError(f"{config} is not a con2 run's configuration, and training would replace it: "
                                  "pick another --out")
    elif (run_dir / "metrics.jsonl").is_file():  # con2 writes config.json first
        raise FileExistsError(f"{run_dir / 'metrics.jsonl'} has no con2 config.json beside it, and training would "
                              "replace it: pick another --out")


def _refuse_another_run(saved: dict, cfg: TrainConfig, source: Path) -> None:
    """A resume whose settings differ from those the run's `source` file (config.json, checkpoint.pt)
    records is refused, naming every one that differs."""
    wrong = identity_mismatch(saved, cfg)
    if wrong:
        raise ValueError(f"cannot continue the run in {source.parent}: {wrong} (its {source.name}); "
                         "continue it with its settings or pick another --out")


def _atomic_save(obj, path: Path) -> None:
    with replacing(path, make_folder=False) as tmp:  # a run folder moved away is not made again by its checkpoint
        torch.save(obj, tmp)


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        # one state per GPU of the saving host; this host may have fewer
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])


def _read_checkpoint(path: Path, cfg: TrainConfig, fingerprint: dict) -> dict:
    """The checkpoint to resume from, after checking it belongs to this run. Read onto the CPU whatever
    the training `device`: torch.set_rng_state takes CPU tensors only (load_state_dict moves the rest)."""
    import zipfile

    try:  # a torch file is a zip whose members carry CRC-32s: a damaged byte is found, not trained on
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{path} is corrupt and cannot be resumed from (not a torch checkpoint: {exc})") from None
    if bad is not None:
        raise ValueError(f"{path} is corrupt and cannot be resumed from (its member {bad} fails its CRC check)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file; torch's own advice (weights_only=False) is wrong for these
        raise ValueError(f"{path} is corrupt and cannot be resumed from ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a con2 checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else None!r})")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:  # checked before the run's files are touched
        raise ValueError(f"{path} is not a complete con2 checkpoint (missing {', '.join(map(repr, missing))}) and "
                         "cannot be resumed from; restore it, or train afresh with another --out")
    _refuse_another_run(ckpt["config"], cfg, path)
    saved = ckpt.get("data_fingerprint")
    if saved is not None and fingerprints_differ(saved, fingerprint):
        raise ValueError(f"cannot continue the run in {path.parent}: the training images differ from the "
                         f"checkpoint's ({saved['count']} images of {saved['shape']} then, {fingerprint['count']} "
                         f"of {fingerprint['shape']} now, or other pixels); resume with the run's data or pick "
                         f"another --out")
    return ckpt


def _load_training_state(ckpt: dict, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Put the checkpoint's weights and optimiser state into `model` and `optimizer`; weights of
    another architecture (a checkpoint older than the settings it records) are named, not a torch dump."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot continue the run in {path.parent}: its {path.name} holds weights or optimiser "
                         f"state of another model ({first}); continue it with the settings it was trained with "
                         "or pick another --out") from None


def _warn_if_views_change(ckpt: dict, pipeline: str, device: torch.device) -> None:
    """The tensor and workers pipelines resume bit-exactly only with the pipeline and device type that
    drew the run's views so far (each seeds its own generators); another is allowed, and said."""
    was_pipeline, was_device = ckpt.get("pipeline"), ckpt.get("device_type")  # absent in older checkpoints
    changed = []
    if was_pipeline == pipeline == "workers" and ckpt.get("view_seeds", 1) != VIEW_SEEDS:
        changed.append("the workers pipeline seeds each sample's views in another way since this checkpoint")
    if was_pipeline is not None and was_pipeline != pipeline:
        changed.append(f"the {was_pipeline} pipeline drew its views so far, the {pipeline} pipeline draws the rest")
    if was_device is not None and was_device != device.type:
        changed.append(f"it trained on {was_device} so far and goes on on {device.type}")
    if changed:
        warnings.warn(f"resuming with other view draws ({'; '.join(changed)}): the remaining views are drawn "
                      "differently (equally distributed), so the weights will not equal those of one "
                      "uninterrupted run; resume with the same --pipeline and --device for that")


def resume_command(run_dir: Path) -> str:
    """The command that continues the run, quoted for a shell (a folder name may hold spaces)."""
    return f"con2 train --resume --out {shlex.quote(str(run_dir))}"


def _metrics_lines(path: Path) -> list[tuple[str, int | None]]:
    """metrics.jsonl's lines (with their line ends) and the global step each logs (None for a line
    cut short or damaged)."""
    if not path.exists():
        return []

    def step(line):
        try:
            return int(json.loads(line)["global_step"]) if line.endswith("\n") else None
        except (ValueError, KeyError, TypeError):
            return None

    return [(line, step(line)) for line in path.read_text(errors="replace").splitlines(keepends=True)]


def _last_logged_step(path: Path) -> int:
    """The last global step metrics.jsonl logs (0 without a readable line)."""
    return max([step for _, step in _metrics_lines(path) if step is not None], default=0)


def _drop_metrics_after(path: Path, global_step: int) -> None:
    """Keep the metrics lines of steps up to the checkpoint's (none on a fresh start): a crash or a
    second Ctrl-C leaves lines of later steps (and maybe one cut short), which the resumed run trains
    and logs again."""
    lines = _metrics_lines(path)
    keep = [line for line, step in lines if step is not None and step <= global_step]
    if len(keep) != len(lines):
        write_text(path, "".join(keep))


# --------------------------------------------------------------------------- training

class _Interrupt:
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP (the terminal closed; not under nohup, which ignores it)
    ask training to stop after the current step, which then checkpoints: a signal arriving mid-step
    (after the forward pass moved the BatchNorm statistics, or halfway through the optimizer's
    update) would otherwise save a state that no uninterrupted run passes through. A second signal
    leaves at once, keeping the last checkpoint."""

    def __enter__(self):
        self.requested, self.pid, self.signum = False, os.getpid(), signal.SIGINT
        self.old = {}
        try:
            for sig in (signal.SIGINT, *stop_signals()):  # not nohup's SIGHUP: ignored, as it asked
                self.old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals go to the main thread anyway
            self.old = {}
        return self

    def _handle(self, signum, frame):
        if os.getpid() != self.pid:  # a forked DataLoader worker (Ctrl-C reaches the whole process
            return                   # group): the main process stops them; one "stopping" line, not three
        if self.requested:
            raise _HardInterrupt() if signum == signal.SIGINT else _HardStop(signum)
        self.requested, self.signum = True, signum
        print(f"\n{signal.Signals(signum).name}: stopping after the current step (again to stop at once)",
              flush=True)

    def __exit__(self, *exc):
        for sig, old in self.old.items():
            signal.signal(sig, old)
        return False


class _HardInterrupt(KeyboardInterrupt):
    """A second signal: leave without checkpointing the half-done step."""


class _HardStop(_HardInterrupt, Stopped):
    """A second SIGTERM / SIGHUP: as _HardInterrupt, named in the command's last line as a Stopped is."""


def stop_requested(requested: bool, world: int, device: torch.device, sync_point: bool) -> bool:
    """Whether to stop after this step. One process: as soon as asked. Under DDP all ranks must stop
    after the same step (a rank that stops early leaves the others waiting in an all-reduce forever),
    so the ranks agree on it at the steps where the host waits anyway (metrics lines, epoch ends)."""
    if world == 1:
        return requested
    if not sync_point:
        return False
    flag = torch.tensor(int(requested), device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _init_distributed(cfg: TrainConfig) -> tuple[torch.device, int, int, int]:
    """(device, rank, world size, local rank); under torchrun, each rank's GPU and the process group."""
    rank, world, local_rank = _dist_env()
    device = resolve_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world, local_rank


def _training_forward(model: Con2Model, cfg: TrainConfig, device: torch.device, world: int, local_rank: int):
    """The model as a step calls it: DDP-wrapped across ranks, compiled with --compile."""
    if world > 1:
        # the ablations and SimCLR leave one projection head out of the loss
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None,
                                                          find_unused_parameters=cfg.objective != "con2")
    return torch.compile(model) if cfg.compile else model


def _train_step(forward, optimizer, cfg: TrainConfig, views: torch.Tensor, lr: float, alpha: float,
                n_contexts: int, offset: int, world: int, amp: bool) -> torch.Tensor:
    """One optimizer step on a batch of views; returns the loss (on the device, not synchronised)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    n_local = views.shape[0] // (2 * n_contexts)
    with torch.autocast(views.device.type, dtype=torch.bfloat16, enabled=amp):
        z_context, z_content = forward(views)
    zc, zs, ctx, ids = _gather_projections(z_context.float(), z_content.float(), n_local, n_contexts, offset, world)
    loss = objective_loss(cfg, zc, zs, ctx, ids, alpha)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


class _FiniteWatch:
    """The first step whose loss was not finite, kept on the device: testing the loss on the host
    every step would stall the GPU queue each step. `check` reads it where the host waits anyway
    (metrics lines, at least once per epoch) and before every checkpoint, so no non-finite state
    is ever saved."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def record(self, loss: torch.Tensor, step: int) -> None:
        self.first_bad = torch.where(torch.isfinite(loss) | (self.first_bad >= 0), self.first_bad, step)

    def check(self) -> None:
        bad = int(self.first_bad)
        if bad >= 0:
            raise FloatingPointError(f"loss became non-finite (nan or inf) at step {bad}; lower --lr or --weight-decay, "
                                     "raise --temperature or disable --amp")


class _StepLog:
    """metrics.jsonl and the progress, on rank 0: a line every LOG_EVERY steps and at epoch ends,
    with the views per second since the last line. Progress is a bar on a terminal; into a log
    file (a batch job's) it is a plain line at most every PLAIN_EVERY_S seconds, as a bar's
    carriage returns would make one ever-growing line there."""

    def __init__(self, run_dir: Path, total: int, initial: int, rank: int, progress: bool):
        self.file = open(run_dir / "metrics.jsonl", "a") if rank == 0 else None
        self.bar, self.plain = None, False
        if progress and rank == 0:
            if sys.stderr.isatty():
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
            else:
                self.plain, self.total, self.t_start, self.step0 = True, total, time.perf_counter(), initial
                self.t_said = -math.inf
        self.t_last, self.views = time.perf_counter(), 0

    def step(self, n_views: int, line: tuple | None = None) -> None:
        """After a step of n_views views (all ranks); line = (epoch, step, global step, loss, lr, alpha)
        to write a metrics line."""
        self.views += n_views
        if line is not None:
            self._line(*line)
        if self.bar:
            self.bar.update(1)

    def _line(self, epoch: int, step: int, global_step: int, loss: float, lr: float, alpha: float) -> None:
        now = time.perf_counter()
        rate = self.views / max(now - self.t_last, 1e-9)
        self.t_last, self.views = now, 0
        if self.file:
            self.file.write(json.dumps({"epoch": epoch, "step": step, "global_step": global_step, "loss": loss,
                                        "lr": lr, "alpha": alpha, "views_per_s": rate}) + "\n")
            self.file.flush()
        if self.bar:
            self.bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", views_s=f"{rate:.0f}", refresh=False)
        if self.plain and (now - self.t_said >= PLAIN_EVERY_S or global_step == self.total):
            self.t_said = now
            done = global_step - self.step0
            eta = (self.total - global_step) * (now - self.t_start) / max(done, 1)
            print(f"step {global_step}/{self.total} ({100 * global_step / self.total:.1f}%), epoch {epoch}, "
                  f"loss {loss:.4f}, lr {lr:.3g}, {rate:.0f} views/s, {duration_text(eta)} left",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
        if self.file:
            self.file.close()


def train(cfg: TrainConfig, split: OneClassSplit | None = None, progress: bool = True,
          resume: bool = False, stop_after_steps: int | None = None, deadline: float | None = None,
          continue_with: str | None = None) -> Path:
    """Train a Con2 (or ablation / SimCLR) model; returns the run directory.

    stop_after_steps: leave (after checkpointing) once this many global steps are done;
    for tests of resume. deadline: a `time.time()` after which to leave the same way, for
    time-boxed jobs (a lent GPU call, a batch-queue slot); `run_finished` tells the two apart.
    continue_with: the command that continues a stopped run, for the line printed when it stops
    (default `con2 train --resume --out RUN`; a sweep or the demo, which resume their own runs, name
    themselves). A second training into the same run folder while one writes it is refused (folder_lock).
    """
    grouped = dist.is_available() and dist.is_initialized()
    with contextlib.ExitStack() as held:  # the run folder's lock, from when it is written until the end
        run_dir = _train(cfg, split, progress, resume, stop_after_steps, deadline, held.enter_context,
                         continue_with)
    if not grouped and dist.is_available() and dist.is_initialized():
        # the group this training made (torchrun): left open, gloo's threads could abort the process at exit
        # ("terminate called without an active exception") after a finished run
        dist.destroy_process_group()
    return run_dir


def _check_out(cfg: TrainConfig, resume: bool, rank: int) -> tuple[Path, Path, bool]:
    """(run_dir, checkpoint path, whether a checkpoint is continued) after the checks of --out that
    need no data: a file, a dangling link, an unwritable folder, a run there already (or none to
    resume), files con2 did not write, a run trained with other settings."""
    run_dir = Path(cfg.out)
    if run_dir.exists() and not run_dir.is_dir():  # found now, not as an OS error after loading the data
        raise FileExistsError(f"--out {run_dir} is a file; give the folder to write the run into")
    if run_dir.is_symlink() and not run_dir.exists():  # mkdir would say only "File exists"
        raise FileNotFoundError(f"--out {run_dir} is a link to {os.readlink(run_dir)}, which does not exist: make "
                                "that folder, or give another --out")
    folder = nearest_folder(run_dir, "--out", run_dir)
    if rank == 0 and not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {run_dir}: the folder {folder} is not writable")
    ckpt_path = run_dir / CHECKPOINT_FILE
    if not resume and (ckpt_path.exists() or run_finished(run_dir)):
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or pick another --out")
    if resume and not ckpt_path.exists() and run_finished(run_dir):  # training afresh would replace its model
        raise FileExistsError(f"{run_dir} holds a trained model but no checkpoint to continue from; "
                              f"pick another --out to train again")
    continuing = resume and ckpt_path.exists()
    if not continuing:
        _refuse_foreign_files(run_dir)
    elif (run_dir / "config.json").is_file():  # before its data loads: another --dataset is named as such
        _refuse_another_run(read_json(run_dir / "config.json"), cfg, run_dir / "config.json")
    return run_dir, ckpt_path, continuing


def _check_step_split(cfg: TrainConfig, count: int, world: int, rank: int) -> None:
    """A step of min(batch size, `count` training images) samples: warned of when the data caps it,
    refused when it does not split evenly over the `world` DDP processes."""
    per_step = min(cfg.batch_size, count)  # the sources cap a batch at the data's size
    if per_step < cfg.batch_size and rank == 0:
        warnings.warn(f"--batch-size {cfg.batch_size} is more than the {per_step} training images: each step takes "
                      f"all {per_step}")
    if per_step % world:  # the ranks all-gather their projections in equal parts
        if cfg.batch_size <= count:
            fix = f"give a --batch-size that is a multiple of {world}"
        elif count >= world:  # the step is the data's size: another multiple of world would not help
            fix = (f"a step is capped at the {count} training images: give a --batch-size of at most "
                   f"{count - count % world}, a multiple of {world}")
        else:
            fix = "there are fewer training images than processes"
        raise ValueError(f"a training step of {per_step} samples (--batch-size {cfg.batch_size}, "
                         f"{count} training images) cannot be split over {world} DDP processes: {fix}")


def _pick_pipeline(cfg: TrainConfig, split, device: torch.device, ckpt: dict | None, rank: int, say) -> str:
    """The view pipeline: --pipeline, or for auto the one a resumed run made its views with so far
    (auto depends on this host's memory), else the one auto picks here, said."""
    pipeline = (ckpt or {}).get("pipeline") if cfg.pipeline == "auto" else None
    pipeline = pipeline or resolve_pipeline(cfg.pipeline, split, device)
    if cfg.pipeline == "auto":
        say(f"--pipeline auto: the {pipeline} pipeline makes the views", flush=True)
    if rank == 0 and ckpt is not None:
        _warn_if_views_change(ckpt, pipeline, device)
    if rank == 0 and pipeline != "workers" and cfg.workers != TrainConfig.workers:
        warnings.warn(f"--workers {cfg.workers} applies to the workers pipeline; the {pipeline} pipeline makes "
                      "these views")
    return pipeline


def _open_run_folder(cfg: TrainConfig, run_dir: Path, ckpt: dict | None, resume: bool, hold) -> None:
    """Make and lock the run folder (the lock held through `hold`), refuse one another training wrote
    since the checks, write config.json and drop the metrics lines past the checkpoint continued."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"--out {run_dir}: cannot make the folder ({exc.strerror or exc})") from exc
    hold(folder_lock(run_dir, "con2 train"))
    if (run_dir / CHECKPOINT_FILE).exists() != (ckpt is not None) or (not resume and run_finished(run_dir)):
        raise FileExistsError(f"{run_dir} was written by another training since this one started; "
                              "pass --resume to continue it or pick another --out")
    write_text(run_dir / "config.json", cfg.with_absolute_paths().to_json())
    # a fresh start (no checkpoint yet) drops every line of an earlier attempt
    _drop_metrics_after(run_dir / "metrics.jsonl", int(ckpt["global_step"]) if ckpt is not None else 0)


def _train(cfg, split, progress, resume, stop_after_steps, deadline, hold, continue_with) -> Path:
    cfg.validate()
    device, rank, world, local_rank = _init_distributed(cfg)
    run_dir, ckpt_path, continuing = _check_out(cfg, resume, rank)
    if split is None:  # a run being continued keeps the split it was trained on
        split = split_as_trained(cfg) if continuing else load_split(cfg)
    views_cfg = view_config(cfg, split)  # refuses unusable image sizes before any file is written
    fingerprint = data_fingerprint(split)
    _check_step_split(cfg, fingerprint["count"], world, rank)
    ckpt = _read_checkpoint(ckpt_path, cfg, fingerprint) if continuing else None
    torch.manual_seed(cfg.seed)
    say = print if progress and rank == 0 else (lambda *a, **k: None)
    say(split.summary(), flush=True)
    if not progress and rank == 0:  # --quiet: still told of files left out and an unusable test split
        for note in split.notes():
            warnings.warn(note.removeprefix("note: "))
    contexts = context_set(cfg)
    model = build_model(cfg, split).to(device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    if world > 1:
        model = convert_batchnorm(model, device)
    forward = _training_forward(model, cfg, device, world, local_rank)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    amp = cfg.amp and on_gpu  # bf16 autocast on the GPU; float32 on the CPU
    if cfg.amp and not on_gpu and rank == 0:  # a warning: --quiet must not hide that the flag is not applied
        warnings.warn("--amp: bf16 autocast is used on the GPU only; training in float32 on the CPU")
    pipeline = _pick_pipeline(cfg, split, device, ckpt, rank, say)
    source = make_batch_source(pipeline, split, contexts, views_cfg, cfg.batch_size, cfg.seed,
                               device, channels_last=on_gpu, rank=rank, world=world, workers=cfg.workers)
    if resume and ckpt is None:  # a log past the first checkpoint: one was written, and is gone
        logged, first = _last_logged_step(run_dir / "metrics.jsonl"), cfg.checkpoint_every * source.steps_per_epoch
        if logged > first:
            raise FileNotFoundError(f"{run_dir}: metrics.jsonl logs training up to step {logged}, past the first "
                                    f"checkpoint (step {first}), but checkpoint.pt is missing; restore it, or "
                                    "train afresh with another --out (starting again here would drop that log)")
    if ckpt is not None:  # before any file is written: weights that do not fit leave the run as it was
        _load_training_state(ckpt, ckpt_path, model, optimizer)
    if rank == 0:  # only now: a refused --resume or pipeline leaves the run's files as they were
        _open_run_folder(cfg, run_dir, ckpt, resume, hold)
    steps_per_epoch = source.steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    n_contexts = source.pipeline.n_contexts if hasattr(source, "pipeline") else (len(contexts) if contexts else 1)

    global_step = 0
    if ckpt is not None:
        _set_rng_state(ckpt["rng"])
        global_step = int(ckpt["global_step"])
        say(f"resuming {run_dir} at step {global_step}/{total}", flush=True)
    elif resume:
        say(f"{run_dir}: no checkpoint to continue from, starting at step 0", flush=True)

    continue_with = continue_with or resume_command(run_dir)
    finite = _FiniteWatch(device)
    agree = functools.partial(stop_requested, world=world, device=device, sync_point=True)

    def checkpoint():
        finite.check()
        if rank != 0:
            return
        _atomic_save({
            "format": CHECKPOINT_FORMAT, "con2_version": __version__, "config": json.loads(cfg.to_json()),
            "data_fingerprint": fingerprint,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "global_step": global_step, "rng": _rng_state(), "pipeline": pipeline, "device_type": device.type,
            "view_seeds": VIEW_SEEDS,
        }, ckpt_path)

    log = _StepLog(run_dir, total, global_step, rank, progress)
    model.train()
    try:
        with _Interrupt() as interrupt:
            while global_step < total:
                epoch, start_step = divmod(global_step, steps_per_epoch)
                for step, views in source.batches_from(epoch, start_step):
                    lr, alpha = schedule(cfg, global_step, total)
                    offset = source.local_slice(*source.batches[step]).start if world > 1 else 0
                    loss = _train_step(forward, optimizer, cfg, views, lr, alpha, n_contexts, offset, world, amp)
                    finite.record(loss, global_step)
                    global_step += 1
                    last_in_epoch = step == steps_per_epoch - 1
                    line = global_step % LOG_EVERY == 0 or last_in_epoch or global_step == total
                    if line:
                        finite.check()
                    log.step(views.shape[0] * world, (epoch, step, global_step, loss.item(), lr, alpha) if line else None)
                    if last_in_epoch and ((epoch + 1) % cfg.checkpoint_every == 0):
                        # a diverged run stops here, not after its last epoch (a checkpoint's cost is ~1 batch)
                        check_trained_model(model, views, amp, agree)
                        checkpoint()
                    sync_point = last_in_epoch or global_step % LOG_EVERY == 0
                    if stop_requested(interrupt.requested, world, device, sync_point):
                        raise interruption(interrupt.signum)  # named in the CLI's last line
                    # each rank reads its own clock: under DDP they agree on the step, as for a signal
                    if global_step < total and (
                            (stop_after_steps is not None and global_step >= stop_after_steps)
                            or (deadline is not None
                                and stop_requested(time.time() >= deadline, world, device, sync_point))):
                        checkpoint()
                        return run_dir
    except _HardInterrupt:
        if rank == 0:
            kept = ("the last checkpoint is kept" if ckpt_path.exists() else
                    "no checkpoint was saved yet, so a resume starts at step 0")
            print(f"\nstopped mid-step; {kept}. Continue with {continue_with}", flush=True)
        raise
    except KeyboardInterrupt:  # at a step boundary (or before the first step)
        checkpoint()
        if rank == 0:
            print(f"\ninterrupted at step {global_step}/{total}; checkpoint saved. Continue with "
                  f"{continue_with}", flush=True)
        raise
    finally:
        log.close()
    check_trained_model(model, next(source.batches_from(0))[1], amp, agree)
    checkpoint()
    if rank == 0:
        save_model(model, run_dir, cfg, fingerprint)
    if world > 1:
        dist.barrier()
    return run_dir
