"""The training loop, top to bottom: data → adapter → optimiser → (schedule, step, clip, log, eval,
checkpoint)*. Seeded and exactly resumable; the frozen LM may be spread with ``device_map`` or the
batch split across DDP ranks (see ``ddp.py``).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapters.artifact import Adapter
from ..adapters.kinds import PROJECTIONS, Projection, build_projection
from ..adapters.stats import low_rank_singular_values, projection_stats
from ..errors import SelfieError
from ..files import remove_stale_temps
from ..interpret.label_text import label_spread
from ..interpret.template import PromptTemplate, resolve_template
from ..models.loading import load_model
from ..models.tokens import end_of_turn_token
from ..models.tree import embedding_norm, model_device
from ..runs.outputs import OutputLock
from . import ddp
from .checkpoint import load_state, save_adapter, save_state, state_path
from .config import DEFAULT_LOW_RANK_RANK, TrainConfig, replace
from .data import Split, check_sources, load_training_data
from .evaluate import evaluate_loss
from .question_loss import QuestionLoss
from .run_dir import check_run_dir, clear_run, truncate_metrics
from .sampling import EpochSampler, Group, parse_ratios, validation_subset
from .timing import StageTimes

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    best_path: Path | None
    final_path: Path | None
    global_step: int
    best_val_loss: float | None
    final_val_loss: float | None
    timing: StageTimes  # wall seconds per stage of this call (load, forward, backward, optimizer, validation, ...)


Progress = Callable[[int, int, dict], None]  # (step, total steps, {"loss", "lr", "steps_per_s"})


def train(cfg: TrainConfig, *, model=None, tokenizer=None, resume: bool = False, overwrite: bool = False,
          stop_at_step: int | None = None, progress: Progress | None = None) -> TrainResult:
    """Train an adapter as ``cfg`` says; returns where the best and final adapters went.

    ``model``/``tokenizer`` default to loading ``cfg.model.name``; ``resume`` continues from the run's
    training state (same settings, see ``run_dir.RESUME_SAFE``); ``overwrite`` replaces a run already
    in the run folder; ``stop_at_step`` ends early with a resumable state (e.g. to fit a job time limit).
    ``progress(step, total, info)`` is called on the main process at the start and after every
    optimizer step (info: loss, lr, steps_per_s), e.g. to drive a progress bar.

    >>> result = train(load_config("examples/goodfire-l19-scalar-affine.yaml"))
    >>> load_adapter(result.best_path)
    """
    def make_run(cfg, model, tokenizer, dist, progress, times):
        return _Run(with_model_defaults(cfg, model, tokenizer), model, tokenizer, dist, progress, times)

    return run_training(cfg, make_run, model=model, tokenizer=tokenizer, resume=resume, overwrite=overwrite,
                        stop_at_step=stop_at_step, progress=progress)


def run_training(cfg: TrainConfig, make_run: Callable[..., _Run], *, model=None, tokenizer=None, resume: bool = False,
                 overwrite: bool = False, stop_at_step: int | None = None,
                 progress: Progress | None = None) -> TrainResult:
    """The one training loop's entry: checks, the run folder's lock, the frozen model, then
    ``make_run(cfg, model, tokenizer, dist, progress, times).fit(...)`` — ``_Run`` (adapters) or a
    subclass that trains something else on the same loop (``reconstruct/train.py``)."""
    check_sources(cfg.data, cfg.base_dir)
    check_run_dir(cfg, resume=resume, overwrite=overwrite)
    dist = ddp.setup_distributed()
    lock = OutputLock(cfg.run_dir).acquire() if dist.is_main else None  # one trainer per run folder
    if lock is not None:
        remove_stale_temps(cfg.run_dir, owned=True)  # what a killed trainer was saving when it died
    times = StageTimes()
    try:
        with times("load"):  # the frozen LM (when not given) and the tokenized data
            if model is None or tokenizer is None:
                model, tokenizer = _load_frozen_model(cfg, dist)
            run = make_run(cfg, model, tokenizer, dist, progress, times)
        try:
            return run.fit(resume=resume, overwrite=overwrite, stop_at_step=stop_at_step)
        finally:
            run.close()
    finally:
        if lock is not None:
            lock.release()


def _load_frozen_model(cfg: TrainConfig, dist: ddp.DistInfo):
    device_map = cfg.model.device_map if torch.cuda.is_available() and dist.world_size == 1 else None
    device = str(dist.device) if dist.device is not None else ("cuda" if torch.cuda.is_available() else None)
    if cfg.model.load_in_8bit:
        raise SelfieError("model.load_in_8bit is not supported by this trainer; use dtype: bfloat16 (the adapter "
                          "gradients flow through the LM, and 8-bit weights would change the published loss)")
    return load_model(cfg.model.name, dtype=cfg.model.dtype, device=None if device_map else device,
                      device_map=device_map)


def with_model_defaults(cfg: TrainConfig, model, tokenizer) -> TrainConfig:
    """Fill what the config leaves to the model: SelfIE template and injection token (model family),
    end-of-turn token (chat template), init scale (mean input-embedding norm) and, for the low-rank
    kinds, the rank (``DEFAULT_LOW_RANK_RANK``). The filled-in config is what the adapter files record."""
    p = cfg.projection
    prompt = resolve_template(tokenizer, cfg.soft_prompt.template, cfg.soft_prompt.reserved_token)
    rank = p.low_rank_rank or (DEFAULT_LOW_RANK_RANK if PROJECTIONS[p.type].needs_rank else None)
    return replace(cfg, soft_prompt={"template": prompt.text, "reserved_token": prompt.injection_token},
                   data={"eos_token": cfg.data.eos_token or end_of_turn_token(tokenizer)},
                   projection={"init_scale": p.init_scale or round(embedding_norm(model), 4), "low_rank_rank": rank})


def use_gradient_checkpointing(cfg: TrainConfig, model) -> bool:
    """``model.enable_gradient_checkpointing`` as set, or (unset) on when the frozen LM runs on a GPU."""
    if cfg.model.enable_gradient_checkpointing is not None:
        return cfg.model.enable_gradient_checkpointing
    return model_device(model).type == "cuda"


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the base learning rates at optimizer step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress


def build_optimizer(projection: Projection, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD+momentum; own learning rates for log_scale and bias; no weight decay on log_scale."""
    t = cfg.training
    groups = []
    for name, p in projection.named_parameters():
        lr = {"log_scale": t.scale_learning_rate, "bias": t.bias_learning_rate}.get(name) or t.learning_rate
        groups.append({"params": [p], "lr": lr, "base_lr": lr, "name": name,
                       "weight_decay": 0.0 if name == "log_scale" else t.weight_decay})
    if t.optimizer_type == "adamw":
        return torch.optim.AdamW(groups, lr=t.learning_rate)
    return torch.optim.SGD(groups, lr=t.learning_rate, momentum=t.momentum)


class _Run:
    """State of one training run (kept in one place so that ``fit`` reads as the loop it is)."""

    def __init__(self, cfg: TrainConfig, model, tokenizer, dist: ddp.DistInfo, progress: Progress | None,
                 times: StageTimes) -> None:
        self.cfg, self.model, self.tokenizer, self.dist, self.times = cfg, model, tokenizer, dist, times
        if dist.device is not None and model_device(model) != dist.device:
            model.to(dist.device)
        model.requires_grad_(False)
        dim = model.config.hidden_size
        self.data = load_training_data(cfg.data, tokenizer, dim, cfg.base_dir)
        self.val = self._val_subset()
        torch.manual_seed(cfg.seed)
        self.projection = self._build_projection(dim)
        self.projection.to(model_device(model)).train()
        self.optimizer = build_optimizer(self.projection, cfg)
        self._setup_loss()
        self.sampler = self._sampler()
        self.batches_per_epoch = math.ceil(self.sampler.epoch_length() / cfg.data.batch_size)
        accum = cfg.training.gradient_accumulation_steps
        self.total_batches = cfg.training.num_epochs * self.batches_per_epoch
        self.total_steps = cfg.training.max_steps or math.ceil(self.total_batches / accum)
        self.run_dir = cfg.run_dir
        self.best_val_loss: float | None = None
        self._orders: dict[int, torch.Tensor] = {}
        self.logger = _Logger(cfg, self.run_dir, dist, progress, self.total_steps)

    # ------------------------------------------------------------------ what is trained (the hooks)

    def _build_projection(self, dim: int) -> Projection:
        p = self.cfg.projection
        return build_projection(p.type, dim, normalize_input=p.normalize_input, init_scale=p.init_scale,
                                rank=p.low_rank_rank, init_factor=p.low_rank_init_factor)

    def _setup_loss(self) -> None:
        cfg, model = self.cfg, self.model
        checkpointing = use_gradient_checkpointing(cfg, model)
        if checkpointing:
            # HF checkpointing drops KV caches inside checkpointed layers, so the prefix is recomputed instead.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.train()
        template = PromptTemplate(cfg.soft_prompt.template, cfg.soft_prompt.reserved_token)
        self.template = template
        self.loss_fn = QuestionLoss(model, self.tokenizer, template, self.data.questions,
                                    label_smoothing=cfg.training.label_smoothing, max_loss=cfg.training.max_loss,
                                    prefix_cache=not checkpointing,
                                    autocast=getattr(torch, cfg.training.autocast) if cfg.training.autocast else None)

    def _per_example_loss(self, split: Split, idx: torch.Tensor) -> torch.Tensor:
        soft = self._soft(self.data.vectors[split.rows[idx]])  # (b, d)
        prompts = None if split.prompts is None else split.prompts[idx]  # which question each example asks
        return self.loss_fn(soft, split.targets[idx], split.lengths[idx], prompts)

    def _validation_loss(self) -> float:
        return evaluate_loss(self.loss_fn, self._soft, self.data, self.val, self.cfg.data.batch_size, self.dist)

    def _save_model(self, path: Path, step: int) -> Path:
        """The artifact (here: an adapter in the published format) with the run's config and the model's signature."""
        return save_adapter(path, self.projection, self.cfg, self.model, global_step=step,
                            best_val_loss=self.best_val_loss, questions=self.data.questions)

    def _sampler(self) -> EpochSampler:
        """Dataset mixing by ``train_dataset_ratios``, or question vs plain-label mixing by ``question_ratio``."""
        cfg, train = self.cfg, self.data.train
        ids, groups = train.dataset_ids, parse_ratios(cfg.data.train_dataset_ratios, self.data.datasets)
        ratio = cfg.data.question_ratio
        if ratio is not None:
            if train.prompts is None or not (train.prompts > 0).any() or (train.prompts > 0).all():
                raise SelfieError("data.question_ratio mixes question–answer pairs with plain labels, but the train "
                                  "split does not have both; set data.question_ratio: null")
            ids, groups = (train.prompts > 0).long(), [Group((0,), 1.0 - ratio), Group((1,), ratio)]
        return EpochSampler(ids, groups, shuffle=cfg.data.shuffle, seed=cfg.seed,
                            resample_each_epoch=cfg.data.resample_each_epoch, debug=cfg.data.debug_dataset_mixing)

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: bool, overwrite: bool, stop_at_step: int | None) -> TrainResult:
        cfg, t = self.cfg, self.cfg.training
        start = 0
        if resume or t.resume_from_checkpoint:
            info = load_state(state_path(cfg), self.projection, self.optimizer)
            start, self.best_val_loss = int(info["global_step"]), info.get("best_val_loss")
            log.info("resumed at step %d", start)
        elif overwrite and self.dist.is_main:
            clear_run(self.run_dir)
        ddp.barrier(self.dist)
        self.saved_step = start
        end = self.total_steps if stop_at_step is None else min(stop_at_step, self.total_steps)
        val_loss = None
        self.logger.start(start)
        for step in range(start, end):
            train_loss, grad_norm, lr = self._optimizer_step(step)  # schedule, forward/backward, clip, update
            done = step + 1
            self._check_finite(done, train_loss)
            with self.times("logging"):
                self.logger.step(done, loss=train_loss, lr=lr, grad_norm=grad_norm, projection=self.projection)
            if done % t.validation_every_n_steps == 0 or done == self.total_steps:
                with self.times("validation"):
                    val_loss = self._validate(done)
            if self.cfg.logging.log_sample_generations and done % cfg.logging.log_generations_every_n_steps == 0:
                with self.times("samples"):
                    self.logger.samples(done, self._sample_descriptions())
            if done % t.checkpoint_every_n_steps == 0 or done == end:
                with self.times("checkpoints"):
                    self._save_state(done)
        with self.times("checkpoints"):
            result = self._finish(end, val_loss)
        self.logger.metrics({"step": end, "timing_s": {k: round(v, 3) for k, v in self.times.seconds.items()}})
        return result

    def _optimizer_step(self, step: int) -> tuple[float, float, float]:
        t = self.cfg.training
        factor = lr_factor(step, self.total_steps, t.warmup_steps, t.scheduler_type)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        self.optimizer.zero_grad(set_to_none=True)
        batches = self._batches_of_step(step)
        loss_sum = torch.zeros(1)
        for idx in batches:
            # each rank: sum of its examples' losses / global batch size / micro-batches → all-reduce = mean
            scale = 1.0 / (len(idx) * len(batches))
            mine = self.dist.shard(idx)
            if len(mine):
                with self.times("forward"):
                    per = self._per_example_loss(self.data.train, mine)  # (b,)
                with self.times("backward"):
                    (per.sum() * scale).backward()
                loss_sum += per.detach().sum().float().cpu() * scale
        with self.times("optimizer"):  # gradient all-reduce, clip, update
            params = list(self.projection.parameters())
            ddp.all_reduce_grads(params, self.dist)
            ddp.all_reduce_sum([loss_sum], self.dist)
            max_norm = t.gradient_clip_norm if t.gradient_clip_norm else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            self.optimizer.step()
        self.times.steps += 1
        return loss_sum.item(), float(grad_norm), self.optimizer.param_groups[0]["lr"]

    def _check_finite(self, step: int, loss: float) -> None:
        """Stop (keeping the last saved state) once the loss or the adapter is no longer finite."""
        bad = [n for n, p in self.projection.named_parameters() if not torch.isfinite(p).all()]
        if math.isfinite(loss) and not bad:
            return
        what = f"loss {loss}" if not math.isfinite(loss) else f"non-finite parameter(s) {', '.join(bad)}"
        raise SelfieError(f"training diverged at step {step} ({what}); the state of step {self.saved_step} is "
                          f"kept in {self.run_dir}. Lower training.learning_rate (or set "
                          "training.gradient_clip_norm) and start over with --overwrite")

    def _batches_of_step(self, step: int) -> list[torch.Tensor]:
        """Global batches (example indices) of one optimizer step; a pure function of (seed, step)."""
        accum = self.cfg.training.gradient_accumulation_steps
        ks = range(step * accum, (step + 1) * accum)
        if self.cfg.training.max_steps is None:
            ks = [k for k in ks if k < self.total_batches]
        return [self._batch(k) for k in ks]

    def _batch(self, k: int) -> torch.Tensor:
        epoch, j = divmod(k, self.batches_per_epoch)
        if epoch not in self._orders:
            self._orders = {epoch: self.sampler.order(epoch)}  # keep one epoch's order
        bs = self.cfg.data.batch_size
        return self._orders[epoch][j * bs:(j + 1) * bs]

    def _soft(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.projection(vectors.to(next(self.projection.parameters()).device))  # (b, d)

    # ------------------------------------------------------------------ eval, samples, files

    def _val_subset(self) -> Split | None:
        val = self.data.val
        if len(val) == 0:
            warnings.warn("no 'val' examples: no validation, the best adapter is not tracked", stacklevel=3)
            return None
        return validation_subset(val, self.data.datasets, self.cfg.data.val_dataset_ratios,
                                 self.cfg.training.val_fraction, self.cfg.seed, self.cfg.data.train_dataset_ratios)

    def _validate(self, step: int) -> float | None:
        if self.val is None:
            return None
        self.projection.eval()
        loss = self._validation_loss()
        self.projection.train()
        is_best = self.best_val_loss is None or loss < self.best_val_loss
        if is_best:
            self.best_val_loss = loss
            if self.dist.is_main:
                self._save_model(self.run_dir / "best.safetensors", step)
        self.logger.metrics({"step": step, "val_loss": loss, "best_val_loss": self.best_val_loss})
        return loss

    def _sample_descriptions(self) -> list[dict]:
        split = self.val if self.val is not None else self.data.train
        rows, labels = [], []
        asks = split.prompts.tolist() if split.prompts is not None else [0] * len(split)
        for r, label, k in zip(split.rows.tolist(), split.labels, asks):
            if r not in rows and k == 0:  # plain labels only: a description answers the meaning question
                rows.append(r)
                labels.append(label)
            if len(rows) == self.cfg.logging.log_sample_generations:
                break
        from ..interpret.describe import Interpreter

        adapter = Adapter(self.projection, {"model_name": self.cfg.model.name})
        interp = Interpreter(self.model, self.tokenizer, adapter, template=self.template, allow_model_mismatch=True)
        descs = interp.describe(self.data.vectors[rows], max_new_tokens=32)
        return [{"label": lab, "generated": d.label} for lab, d in zip(labels, descs)]

    def _save_state(self, step: int) -> None:
        if self.dist.is_main:
            save_state(self.run_dir, self.projection, self.optimizer, global_step=step,
                       best_val_loss=self.best_val_loss, cfg=self.cfg)
        self.saved_step = step
        ddp.barrier(self.dist)

    def _finish(self, step: int, val_loss: float | None) -> TrainResult:
        final = None
        finished = step == self.total_steps
        if finished and self.cfg.training.save_final_checkpoint and self.dist.is_main:
            final = self._save_model(self.run_dir / "final.safetensors", step)
        best = self.run_dir / "best.safetensors"
        ddp.barrier(self.dist)
        return TrainResult(self.run_dir, best if best.exists() else None, final, step, self.best_val_loss,
                           val_loss, self.times)

    def close(self) -> None:
        self.logger.close()


class _Logger:
    """Progress callback, metrics JSONL in the run folder, optional wandb; only rank 0 reports."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, dist: ddp.DistInfo, progress: Progress | None,
                 total: int) -> None:
        self.cfg, self.active, self.total = cfg, dist.is_main, total
        self.path = run_dir / "metrics.jsonl"
        self.wandb = None
        self.progress = progress if self.active else None
        self._t0, self._s0 = time.perf_counter(), 0
        if self.active:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.wandb = _start_wandb(cfg) if cfg.logging.use_wandb else None

    def start(self, step: int) -> None:
        self._t0, self._s0 = time.perf_counter(), step
        if self.active:
            truncate_metrics(self.path, step)  # rows past the resumed state would be logged twice
        if self.progress is not None:
            self.progress(step, self.total, {})

    def step(self, step: int, *, loss: float, lr: float, grad_norm: float, projection: Projection) -> None:
        rate = (step - self._s0) / max(time.perf_counter() - self._t0, 1e-9)
        if self.progress is not None:
            self.progress(step, self.total, {"loss": loss, "lr": lr, "steps_per_s": rate})
        if step % self.cfg.logging.log_every_n_steps == 0 or step == self.total:
            row = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "steps_per_s": rate}
            row.update(_adapter_stats(projection, step, self.cfg.logging.log_singular_values_every_n_steps))
            self.metrics(row)

    def metrics(self, row: dict) -> None:
        if not self.active:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def samples(self, step: int, rows: list[dict]) -> None:
        """Log sample generations with their spread; warn when distinct inputs share a few labels."""
        spread = label_spread(r["generated"] for r in rows)
        self.metrics({"step": step, "samples": rows, "distinct_generated": spread.distinct, "inputs": spread.inputs})
        if spread.collapsed and self.active:
            warnings.warn(f"step {step}: sample generations look collapsed ({spread.summary()}); the adapter maps "
                          "different vectors to the same few labels (see docs/training.md)", stacklevel=2)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(cfg: TrainConfig):
    try:
        import wandb
    except ImportError:
        warnings.warn("logging.use_wandb is true but wandb is not installed; continuing without it "
                      "(pip install wandb, or set logging.use_wandb: false)", stacklevel=4)
        return None
    lg = cfg.logging
    return wandb.init(project=lg.wandb_project, entity=lg.wandb_entity, name=lg.wandb_run_name or cfg.run_name,
                      config=cfg.to_dict())


def _adapter_stats(projection: Projection, step: int, sv_every: int) -> dict:
    """Scale, bias norm and (every ``sv_every`` steps) the top singular values of U·Vᵀ."""
    out = projection_stats(projection, ("scale", "bias_norm"))
    if hasattr(projection, "U") and sv_every and step % sv_every == 0:
        out["uv_singular_values"] = low_rank_singular_values(projection)[:8].tolist()
    return out
