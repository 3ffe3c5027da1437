"""The Con2 training loop (METHOD section 6).

AdamW + per-step cosine schedule + alpha annealed linearly 0 -> 1; optional bf16 autocast
on the GPU; atomic checkpoints that resume exactly (step, LR, alpha, optimizer, RNG);
DDP under torchrun with the same global-batch semantics as one process.

Run directory: config.json, metrics.jsonl, checkpoint.pt (resumable), and at the end
model.safetensors + model.json (the trained Con2Model).
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__
from .config import MIN_IMAGE_SIDE, TrainConfig
from .data import ContextSet, OneClassSplit, ViewConfig, load_split
from .data.datasets import DataError
from .data.sources import make_batch_source
from .distributed import convert_batchnorm
from .losses import con2_loss, content_only_loss, context_only_loss, simclr_loss, view_labels
from .model import Con2Model

MODEL_FORMAT = "con2-model/1"
CHECKPOINT_FORMAT = "con2-checkpoint/1"
LOG_EVERY = 10  # steps between metrics lines inside an epoch
# The settings that make a run what it is: a resume must keep them, and a run's weights must have
# been trained with them. Paths, device, pipeline, compile and checkpointing may change.
IDENTITY_KEYS = ("dataset", "context", "objective", "normal_class", "image_size", "center_crop", "resolution",
                 "epochs", "batch_size", "lr", "weight_decay", "temperature", "amp", "seed", "width",
                 "split_seed", "test_fraction", "max_train_samples")


def run_identity(cfg: TrainConfig) -> dict:
    return {k: getattr(cfg, k) for k in IDENTITY_KEYS}


def identity_mismatch(saved: dict, cfg: TrainConfig) -> str | None:
    """'key was X, now Y' for the first identity setting that differs, else None. Keys the saved
    identity lacks (written by an older con2) are not compared."""
    now = json.loads(json.dumps(run_identity(cfg)))  # lists / tuples as JSON has them
    for key in IDENTITY_KEYS:
        if key in saved and saved[key] != now[key]:
            return f"{key} was {saved[key]!r}, now {now[key]!r}"
    return None


# --------------------------------------------------------------------------- setup

def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N): {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def context_set(cfg: TrainConfig) -> ContextSet | None:
    """The training contexts; None for the SimCLR baseline (original context only)."""
    return None if cfg.objective == "simclr" else ContextSet(cfg.context)


def training_size(cfg: TrainConfig, split: OneClassSplit) -> int:
    """The side of the views the network sees: the centred crop when the run crops (the paper's
    resize 256, crop 224 trains on 224 px views), else --image-size (views are resized to it from
    images of any size), else the images' own size, which must then be square (a view is square)."""
    if cfg.center_crop or cfg.image_size:
        return cfg.center_crop or cfg.image_size
    h, w = split.train.shape[1:3]
    if h != w or h < MIN_IMAGE_SIDE:
        raise DataError(f"{split.name}: the images are {w}x{h} px; training needs square images of at least "
                        f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}: pass --image-size S (resize) or --center-crop S")
    return h


def view_config(cfg: TrainConfig, split: OneClassSplit) -> ViewConfig:
    return ViewConfig(size=training_size(cfg, split))


def build_model(cfg: TrainConfig, split: OneClassSplit) -> Con2Model:
    return Con2Model(in_channels=split.channels, image_size=training_size(cfg, split), width=cfg.width)


def objective_loss(cfg: TrainConfig, z_context, z_content, context_labels, sample_ids, alpha):
    if cfg.objective == "con2":
        return con2_loss(z_context, z_content, context_labels, sample_ids, alpha, cfg.temperature)
    if cfg.objective == "context":
        return context_only_loss(z_context, z_content, context_labels, sample_ids, alpha, cfg.temperature)
    if cfg.objective == "content":
        return content_only_loss(z_context, z_content, context_labels, sample_ids, alpha, cfg.temperature)
    return simclr_loss(z_content, sample_ids, cfg.temperature)


def check_trained_model(model: Con2Model, views: torch.Tensor, amp: bool) -> None:
    """Refuse to save a model that cannot score: finite losses can still leave BatchNorm running
    statistics (used in eval mode, never in the loss) so large that every representation is NaN."""
    state = [*model.named_parameters(), *model.named_buffers()]
    bad = next((f"{name} is not finite" for name, t in state if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is None:
        was_training = model.training
        model.eval()
        with torch.autocast(views.device.type, dtype=torch.bfloat16, enabled=amp):
            finite = bool(torch.isfinite(model.encode(views[:64])).all())
        model.train(was_training)
        bad = None if finite else "the eval-mode representations are not finite (BatchNorm running statistics blew up)"
    if bad is not None:
        raise FloatingPointError(f"training diverged: {bad}, so the model cannot score; lower --lr")


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

def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_model(model: Con2Model, run_dir: Path, cfg: TrainConfig) -> None:
    """The final model as safetensors (no pickle) plus its architecture as JSON; both carry the
    run's identity settings, so weights copied in from another run are refused by load_run."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    identity = json.dumps(run_identity(cfg), sort_keys=True)
    tmp = run_dir / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": MODEL_FORMAT, "identity": identity})
    os.replace(tmp, run_dir / "model.safetensors")
    info = {"format": MODEL_FORMAT, "con2_version": __version__, "architecture": model.architecture(),
            "identity": json.loads(identity)}
    (run_dir / "model.json").write_text(json.dumps(info, indent=2))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is corrupt (not valid JSON: {exc})") from None


def run_finished(run_dir: str | Path) -> bool:
    """Whether training of the run in `run_dir` ran to the end (its final model is written)."""
    return (Path(run_dir) / "model.safetensors").exists() and (Path(run_dir) / "model.json").exists()


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[TrainConfig, Con2Model]:
    """The config and trained model of a finished run, in eval mode."""
    run_dir = Path(run_dir)
    for name in ("config.json", "model.json", "model.safetensors"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(
                f"{run_dir} is not a finished con2 run: {name} is missing (train it, or --resume it)"
            )
    cfg = TrainConfig.from_dict(_read_json(run_dir / "config.json"))
    info = _read_json(run_dir / "model.json")
    if info.get("format") != MODEL_FORMAT:
        raise ValueError(f"{run_dir}/model.json has format {info.get('format')!r}, expected {MODEL_FORMAT!r}")
    weights = run_dir / "model.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated / garbage files
        raise ValueError(f"{weights} is corrupt or not a safetensors file ({type(exc).__name__}: {exc})") from None
    for source, saved in (("model.safetensors", json.loads(meta.get("identity", "{}"))),
                          ("model.json", info.get("identity", {}))):
        wrong = identity_mismatch(saved, cfg)
        if wrong:
            raise ValueError(f"{run_dir}: {source} was trained with other settings than config.json "
                             f"({wrong}); the weights belong to another run")
    model = Con2Model(**info["architecture"])
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match a con2 model with {info['architecture']}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    wrong_shape = next((k for k in expected if state[k].shape != expected[k].shape), None)
    if wrong_shape:
        raise ValueError(f"{weights} holds weights of another architecture: {wrong_shape} is "
                         f"{list(state[wrong_shape].shape)}, a model with {info['architecture']} has "
                         f"{list(expected[wrong_shape].shape)}")
    model.load_state_dict(state)
    return cfg, model.to(resolve_device(str(device)) if isinstance(device, str) else device).eval()


def data_fingerprint(split: OneClassSplit) -> dict:
    """What a resume checks the training images against: their count, shape and a hash of the pixels
    (data files may move; the images must not change)."""
    from .scoring import image_keys, to_nchw

    images = to_nchw(split.train)
    keys = image_keys(images) if len(images) else torch.zeros(0, dtype=torch.int64)
    return {"count": int(images.shape[0]), "shape": list(images.shape[1:]), "hash": int(keys.sum()) % 2**61}


def _read_checkpoint(path: Path, cfg: TrainConfig, fingerprint: dict, device) -> dict:
    """The checkpoint to resume from, after checking it belongs to this run."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated / not a torch file
        raise ValueError(f"{path} is corrupt and cannot be resumed from ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a con2 checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else None!r})")
    wrong = identity_mismatch(ckpt["config"], cfg)
    if wrong:
        raise ValueError(f"--resume: {wrong} in {path}; resume with the run's settings or pick another --out")
    saved = ckpt.get("data_fingerprint")
    if saved is not None and saved != fingerprint:
        raise ValueError(f"--resume: the training images differ from the checkpoint's ({saved['count']} images of "
                         f"{saved['shape']} then, {fingerprint['count']} of {fingerprint['shape']} now, or other "
                         f"pixels); resume with the run's data or pick another --out")
    return ckpt


# --------------------------------------------------------------------------- training

class _Interrupt:
    """Ctrl-C (SIGINT) and SIGTERM ask training to stop after the current step, which then
    checkpoints: a signal arriving mid-step (after the forward pass moved the BatchNorm statistics,
    or halfway through the optimizer's update) would otherwise save a state that no uninterrupted
    run passes through. A second signal leaves at once, keeping the last checkpoint."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.requested = False
        self.old = {}
        try:
            for sig in self.SIGNALS:
                self.old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals go to the main thread anyway
            self.old = {}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise _HardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after the current step (again to stop at once)",
              flush=True)

    def __exit__(self, *exc):
        for sig, old in self.old.items():
            signal.signal(sig, old)
        return False


class _HardInterrupt(KeyboardInterrupt):
    """A second signal: leave without checkpointing the half-done step."""


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


def train(cfg: TrainConfig, split: OneClassSplit | None = None, progress: bool = True,
          resume: bool = False, stop_after_steps: int | None = None, deadline: float | None = None) -> Path:
    """Train a Con2 (or ablation / SimCLR) model; returns the run directory.

    stop_after_steps: leave (after checkpointing) once this many global steps are done;
    for tests of resume. deadline: a `time.time()` after which to leave the same way, for
    time-boxed jobs (a lent GPU call, a batch-queue slot); `run_finished` tells the two apart.
    """
    cfg.validate()
    rank, world, local_rank = _dist_env()
    device = resolve_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    run_dir = Path(cfg.out)
    ckpt_path = run_dir / "checkpoint.pt"
    if not resume and ckpt_path.exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or pick another --out")
    split = split if split is not None else load_split(cfg)
    fingerprint = data_fingerprint(split)
    views_cfg = view_config(cfg, split)  # refuses unusable image sizes before any file is written
    ckpt = _read_checkpoint(ckpt_path, cfg, fingerprint, device) if resume and ckpt_path.exists() else None
    if rank == 0:  # only now: a refused --resume leaves the run's files as they were
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(cfg.to_json())

    torch.manual_seed(cfg.seed)
    if progress and rank == 0:
        print(split.summary(), flush=True)
    contexts = context_set(cfg)
    model = build_model(cfg, split).to(device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    if world > 1:
        model = convert_batchnorm(model, device)
        # the ablations and SimCLR leave one projection head out of the loss
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if on_gpu else None,
                                                        find_unused_parameters=cfg.objective != "con2")
    else:
        ddp = model
    forward = torch.compile(ddp) if cfg.compile else ddp
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    amp = cfg.amp and on_gpu  # bf16 autocast on the GPU; float32 on the CPU
    if cfg.amp and not on_gpu and progress and rank == 0:
        print("--amp: bf16 autocast is used on the GPU only; training in float32 on the CPU", flush=True)
    source = make_batch_source(cfg.pipeline, split, contexts, views_cfg, cfg.batch_size, cfg.seed,
                               device, channels_last=on_gpu, rank=rank, world=world)
    steps_per_epoch = source.steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    n_contexts = source.pipeline.n_contexts if hasattr(source, "pipeline") else (len(contexts) if contexts else 1)

    global_step = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"])
        global_step = int(ckpt["global_step"])
        if progress and rank == 0:
            print(f"resuming {run_dir} at step {global_step}/{total}", flush=True)
    elif resume and rank == 0 and progress:
        print(f"--resume: no checkpoint in {run_dir}, starting fresh", flush=True)

    # First step whose loss was not finite, kept on the device: testing the loss on the host every
    # step would stall the GPU queue each step. Read where the host waits anyway (metrics lines,
    # at least once per epoch) and before every checkpoint, so no non-finite state is ever saved.
    nonfinite_at = torch.full((), -1, dtype=torch.long, device=device)

    def check_finite():
        bad = int(nonfinite_at)
        if bad >= 0:
            raise FloatingPointError(f"loss became non-finite (nan or inf) at step {bad}; lower --lr, raise --temperature "
                                     "or disable --amp")

    def checkpoint():
        check_finite()
        if rank != 0:
            return
        _atomic_save({
            "format": CHECKPOINT_FORMAT, "con2_version": __version__, "config": json.loads(cfg.to_json()),
            "data_fingerprint": fingerprint,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "global_step": global_step, "rng": _rng_state(),
        }, ckpt_path)

    log = open(run_dir / "metrics.jsonl", "a") if rank == 0 else None
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=global_step, unit="step", dynamic_ncols=True)
    model.train()
    t_last, views_since = time.perf_counter(), 0
    try:
        with _Interrupt() as interrupt:
            while global_step < total:
                epoch, start_step = divmod(global_step, steps_per_epoch)
                for step, views in source.batches_from(epoch, start_step):
                    lr, alpha = schedule(cfg, global_step, total)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    n_local = views.shape[0] // (2 * n_contexts)
                    offset = source.local_slice(*source.batches[step]).start if world > 1 else 0
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        z_context, z_content = forward(views)
                    zc, zs, ctx, ids = _gather_projections(z_context.float(), z_content.float(), n_local,
                                                           n_contexts, offset, world)
                    loss = objective_loss(cfg, zc, zs, ctx, ids, alpha)
                    nonfinite_at = torch.where(torch.isfinite(loss) | (nonfinite_at >= 0), nonfinite_at, global_step)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    global_step += 1
                    views_since += views.shape[0] * world
                    last_in_epoch = step == steps_per_epoch - 1
                    if global_step % LOG_EVERY == 0 or last_in_epoch or global_step == total:
                        check_finite()
                        now = time.perf_counter()
                        rate = views_since / max(now - t_last, 1e-9)
                        t_last, views_since = now, 0
                        if log:
                            log.write(json.dumps({"epoch": epoch, "step": step, "global_step": global_step,
                                                  "loss": loss.item(), "lr": lr, "alpha": alpha,
                                                  "views_per_s": rate}) + "\n")
                            log.flush()
                        if bar:
                            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}", views_s=f"{rate:.0f}", refresh=False)
                    if bar:
                        bar.update(1)
                    if last_in_epoch and ((epoch + 1) % cfg.checkpoint_every == 0):
                        checkpoint()
                    if stop_requested(interrupt.requested, world, device, last_in_epoch or global_step % LOG_EVERY == 0):
                        raise KeyboardInterrupt
                    if global_step < total and (
                            (stop_after_steps is not None and global_step >= stop_after_steps)
                            or (deadline is not None and time.time() >= deadline)):
                        checkpoint()
                        return run_dir
    except _HardInterrupt:
        if rank == 0:
            print(f"\nstopped mid-step; the last checkpoint is kept. Continue with --resume --out {run_dir}", flush=True)
        raise
    except KeyboardInterrupt:  # at a step boundary (or before the first step)
        checkpoint()
        if rank == 0:
            print(f"\ninterrupted at step {global_step}/{total}; checkpoint saved. Continue with --resume --out {run_dir}",
                  flush=True)
        raise
    finally:
        if bar:
            bar.close()
        if log:
            log.close()
    check_trained_model(model, next(source.batches_from(0))[1], amp)
    checkpoint()
    if rank == 0:
        save_model(model, run_dir, cfg)
    if world > 1:
        dist.barrier()
    return run_dir
