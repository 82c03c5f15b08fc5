"""DeepInversion (Yin et al., CVPR 2020): optimize pixels until the teacher's BatchNorm layers
see the statistics they were trained on, and the teacher sees the sampled target classes.

    loss = ce_weight * CE(teacher(x'), y)     (y: one class, or two with target_mix > 0)
         + bn_weight * mean_l w_l d_l(x')     (d_l: bn_stats.py, per channel and unitless by default)
         + tv_l1 * TV_1(x') + tv_l2 * TV_2(x') + l2 * mean_i ||x'_i||_2
         - competition_weight * JS(teacher(x') || student(x'))        (ADI, Yin et al. 2020)
         + diversity_weight * mean_i t log mean_j exp(cos(f(x'_i), f_j) / t)   (below)

where x' is x randomly jittered (rolled) and flipped, and w_1 = first_bn_multiplier, w_l = 1.
With ``bn_momentum`` > 0 the statistics d_l compares are a moving average over the batches dreamed
so far (Fang et al.'s BN momentum; bn_stats.py).
Adam on the pixels with a cosine learning rate, optionally a first phase at half resolution
(multi-resolution warm-up); pixels clipped to the data set's range; the lowest-loss iterate is kept.

The diversity term keeps the dreams of a class from collapsing onto a few modes, as the memory bank
of contrastive model inversion does (CMI, Fang et al., IJCAI 2021): f is the teacher's penultimate
features (L2-normalized), j runs over the other dreams of dream i's class (the rest of the batch and
a memory of the last ``diversity_memory`` dreams), t is ``diversity_temperature``, and the mean over
i takes the dreams that have another of their class: a soft maximum of cosine similarities, in
cosine units. Other classes are left to the class term, which keeps them apart already.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from dfkd.models import classifier, penultimate_features
from dfkd.synthesis.base import Synthesizer, temporarily_frozen
from dfkd.errors import check
from dfkd.synthesis.bn_stats import DISTANCES, BNStatsHook, bn_loss, bn_statistics, updated_history


def image_priors(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Total variation (mean absolute and mean squared neighbour differences, horizontal,
    vertical and both diagonals) and the mean per-image L2 norm."""
    diffs = [x[..., :, :-1] - x[..., :, 1:], x[..., :-1, :] - x[..., 1:, :],
             x[..., 1:, :-1] - x[..., :-1, 1:], x[..., :-1, :-1] - x[..., 1:, 1:]]
    tv_l1 = sum(d.abs().mean() for d in diffs)
    tv_l2 = sum(d.pow(2).mean() for d in diffs)
    l2 = x.flatten(1).norm(dim=1).mean()
    return tv_l1, tv_l2, l2


def js_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor, temperature: float = 3.0) -> torch.Tensor:
    """Jensen-Shannon divergence between two softened output distributions (0 when equal,
    at most ln 2), averaged over the batch."""
    log_p = F.log_softmax(logits_p / temperature, dim=1)
    log_q = F.log_softmax(logits_q / temperature, dim=1)
    log_m = (0.5 * (log_p.exp() + log_q.exp())).clamp_min(1e-12).log()
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(1)
    return 0.5 * (kl_pm + kl_qm).mean()


class DeepInversion(Synthesizer):
    """Optimize the pixels of each batch from noise (``iterations`` Adam steps)."""

    needs_batchnorm = True

    def __init__(self, teacher: nn.Module, image_shape, num_classes: int, pixel_bounds,
                 seed: int = 0, iterations: int = 200, lr: float = 0.1,
                 betas: tuple[float, float] = (0.5, 0.9), bn_weight: float = 30.0,
                 first_bn_multiplier: float = 1.0, ce_weight: float = 1.0, tv_l1: float = 0.0,
                 tv_l2: float = 1e-4, l2: float = 0.0, competition_weight: float = 0.0,
                 competition_temperature: float = 3.0, jitter: int = 1, flip: bool = True,
                 multires_iterations: int = 0, mixed_precision: bool | str = "auto",
                 bn_distance: str = "normalized", bn_momentum: float = 0.0,
                 target_mix: float = 0.0, diversity_weight: float = 0.0, diversity_temperature: float = 0.1,
                 diversity_memory: int = 4096) -> None:
        super().__init__(teacher, image_shape, num_classes, pixel_bounds, seed)
        check(int(iterations) >= 1, f"synthesis.synthesizer.iterations={iterations} must be at least 1 "
              f"(0 would distil on noise; recovery=noise_kd does that on purpose).")
        self.iterations, self.lr, self.betas = int(iterations), float(lr), tuple(betas)
        self.multires_iterations = int(multires_iterations)
        self.weights = {"ce": float(ce_weight), "bn": float(bn_weight), "tv_l1": float(tv_l1),
                        "tv_l2": float(tv_l2), "l2": float(l2), "adi": -float(competition_weight),
                        "diversity": float(diversity_weight)}
        weights = {"ce_weight": ce_weight, "bn_weight": bn_weight, "tv_l1": tv_l1, "tv_l2": tv_l2, "l2": l2,
                   "competition_weight": competition_weight, "diversity_weight": diversity_weight,
                   "first_bn_multiplier": first_bn_multiplier}
        negative = [f"{k}={v}" for k, v in weights.items() if float(v) < 0]
        check(not negative, f"synthesis.synthesizer.{negative[0] if negative else ''} is negative: a loss weight "
              f"must be >= 0 (a negative one rewards what the term penalizes; 0 turns the term off).")
        self.first_bn_multiplier = float(first_bn_multiplier)
        self.competition_temperature = float(competition_temperature)
        self.jitter, self.flip = int(jitter), bool(flip)
        check(bn_distance in DISTANCES, f"synthesis.synthesizer.bn_distance={bn_distance!r} is unknown; "
              f"choose one of {list(DISTANCES)}.")
        check(mixed_precision in ("auto", True, False),
              f"synthesis.synthesizer.mixed_precision={mixed_precision!r}: choose auto (bf16 on GPUs "
              f"that have it), true (bf16 on any device, the CPU included) or false.")
        check(0 <= float(bn_momentum) < 1, f"synthesis.synthesizer.bn_momentum={bn_momentum} must be in "
              f"[0, 1): the weight of the earlier batches' BatchNorm statistics (0: each batch alone).")
        self.bn_distance, self.mixed_precision = bn_distance, mixed_precision
        self.bn_momentum = float(bn_momentum)
        check(0 <= float(target_mix) <= 1, f"synthesis.synthesizer.target_mix={target_mix} must be in "
              f"[0, 1]: the share of each batch dreamed towards two classes (0: one class each).")
        check(float(target_mix) == 0 or num_classes > 1, f"synthesis.synthesizer.target_mix={target_mix} "
              f"needs at least two classes (data.num_classes={num_classes}); set it to 0.")
        self.target_mix = float(target_mix)
        check(float(diversity_temperature) > 0, f"synthesis.synthesizer.diversity_temperature="
              f"{diversity_temperature} must be > 0: the temperature of the diversity term's soft maximum (0.1).")
        check(isinstance(diversity_memory, int) and diversity_memory >= 0,
              f"synthesis.synthesizer.diversity_memory={diversity_memory!r} must be a whole number >= 0: how "
              f"many earlier dreams the diversity term compares each new one with (0: its own batch only).")
        check(float(diversity_weight) == 0 or classifier(teacher) is not None,
              f"synthesis.synthesizer.diversity_weight={diversity_weight} compares the teacher's penultimate "
              f"features (the input of its last Linear layer), and {type(teacher).__name__} has no Linear "
              f"layer: set synthesis.synthesizer.diversity_weight=0.")
        self.diversity_temperature, self.diversity_memory = float(diversity_temperature), diversity_memory
        # the last diversity_memory dreams' penultimate features (unit length) and target classes
        self.feature_memory: tuple[torch.Tensor, torch.Tensor] | None = None
        self.bn_history: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def state_dict(self) -> dict:
        history = None if self.bn_history is None else [(m.cpu(), v.cpu()) for m, v in self.bn_history]
        memory = None if self.feature_memory is None else tuple(t.cpu() for t in self.feature_memory)
        return {**super().state_dict(), "bn_history": history, "feature_memory": memory}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        history = state.get("bn_history")  # saved on the CPU; the moving average runs where the teacher is
        self.bn_history = None if history is None else [(m.to(self.device), v.to(self.device)) for m, v in history]
        memory = state.get("feature_memory")  # as much of it as this run's settings keep
        keep = self.diversity_memory if self.weights["diversity"] else 0
        self.feature_memory = None if memory is None or keep == 0 else tuple(
            t[-keep:].to(self.device) for t in memory)

    def bn_hooks(self):
        """The BatchNorm-statistics hooks of one batch (with the moving average when bn_momentum > 0)."""
        return bn_statistics(self.teacher, self.bn_distance, self.bn_history, self.bn_momentum)

    def remember_bn(self, hooks: list[BNStatsHook]) -> None:
        """Fold the batch just dreamed into the moving average of the BatchNorm statistics."""
        if self.bn_momentum > 0:
            self.bn_history = updated_history(hooks, self.bn_history, self.bn_momentum)

    def mixed_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """What each image is dreamed towards: its class (``targets``, returned unchanged when
        target_mix is 0), or, for a share target_mix of the batch, class probabilities: its class
        with weight lambda ~ U(0.5, 1) and another class, drawn uniformly, with 1 - lambda. Images
        between two classes carry the teacher's decision boundary (Nayak et al. 2019 dream towards
        soft targets too); the class a batch is judged and balanced by stays ``targets``. The loss
        logged then includes the targets' own entropy, so it does not compare across settings."""
        if self.target_mix == 0:
            return targets
        n, k = len(targets), self.num_classes
        mixed = torch.rand(n, generator=self.generator) < self.target_mix
        other = (targets.cpu() + torch.randint(1, k, (n,), generator=self.generator)) % k
        share = torch.where(mixed, 0.5 + 0.5 * torch.rand(n, generator=self.generator), torch.ones(n))
        probs = F.one_hot(targets.cpu(), k).float() * share[:, None]
        probs[torch.arange(n), other] += 1 - share
        return probs.to(targets.device)

    def diversity_loss(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The diversity term: each dream's soft-maximum cosine similarity to the other dreams of
        its class, in the batch and in the memory, averaged over the dreams that have one (0 when
        none has)."""
        f = F.normalize(features.float().flatten(1), dim=1)
        others, other_classes = f.detach(), classes
        if self.feature_memory is not None:
            others = torch.cat([self.feature_memory[0].to(f), others])
            other_classes = torch.cat([self.feature_memory[1].to(classes), classes])
        same = classes[:, None] == other_classes[None, :]
        same[:, len(others) - len(f):].fill_diagonal_(False)  # not itself
        t, count = self.diversity_temperature, same.sum(1)
        # the lowest finite value, not -inf, for the others: a dream with none stays finite, and is
        # then left out (no host-device synchronization, so no stall on a GPU)
        logits = (f @ others.T / t).masked_fill(~same, torch.finfo(f.dtype).min)
        soft = t * (torch.logsumexp(logits, 1) - count.clamp_min(1).float().log())
        return torch.where(count > 0, soft, 0.0).sum() / count.gt(0).sum().clamp_min(1)

    def judge_and_remember(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """The finished batch's quality figures; its features join the diversity term's memory
        (the oldest leave) when the term is on."""
        stats, f = self.judge(images, targets)
        if self.weights["diversity"] and self.diversity_memory > 0:
            if self.feature_memory is not None:
                f = torch.cat([self.feature_memory[0].to(f), f])
                targets = torch.cat([self.feature_memory[1].to(targets), targets])
            self.feature_memory = (f[-self.diversity_memory:], targets[-self.diversity_memory:])
        return stats

    @property
    def competes(self) -> bool:
        return self.weights["adi"] != 0 and self.student is not None

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if self.jitter > 0:
            dx, dy = torch.randint(-self.jitter, self.jitter + 1, (2,), generator=self.generator)
            x = torch.roll(x, shifts=(int(dx), int(dy)), dims=(2, 3))
        if self.flip and torch.rand((), generator=self.generator) < 0.5:
            x = torch.flip(x, dims=(3,))
        return x

    def losses(self, x: torch.Tensor, targets: torch.Tensor,
               hooks: list[BNStatsHook]) -> dict[str, torch.Tensor]:
        """Every named loss term of one step on the (already augmented) batch ``x``, and their
        weighted sum as ``total``."""
        # bf16 autocast (auto: on GPUs that have it); BatchNorm statistics and losses stay in fp32
        amp = self.mixed_precision is True or (
            self.mixed_precision == "auto" and x.is_cuda and torch.cuda.is_bf16_supported())
        diverse = self.weights["diversity"] != 0
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp), \
                (penultimate_features(self.teacher) if diverse else contextlib.nullcontext([])) as features:
            logits = self.teacher(x).float()
            student_logits = self.student(x).float() if self.competes else None
        tv_l1, tv_l2, l2 = image_priors(x)
        terms = {"ce": F.cross_entropy(logits, targets), "bn": bn_loss(hooks, self.first_bn_multiplier),
                 "tv_l1": tv_l1, "tv_l2": tv_l2, "l2": l2,
                 "adi": (js_divergence(logits, student_logits, self.competition_temperature)
                         if student_logits is not None else logits.new_zeros(())),
                 "diversity": (self.diversity_loss(features[0], targets if not targets.is_floating_point()
                                               else targets.argmax(1)) if diverse else logits.new_zeros(()))}
        terms["total"] = sum(w * terms[k] for k, w in self.weights.items() if w)
        return terms

    def _optimize(self, x: torch.Tensor, targets: torch.Tensor, iterations: int,
                  hooks: list[BNStatsHook]) -> tuple[torch.Tensor, float]:
        """Adam on the pixels of ``x`` with a cosine learning rate; the lowest-loss iterate, the
        one after the last step included. The comparison stays on the device (no host sync per step)."""
        x = x.detach().requires_grad_(True)
        with torch.no_grad():
            self.clamp_(x)  # the start is scored too: it must lie in the pixel range like the rest
        optimizer = torch.optim.Adam([x], lr=self.lr, betas=self.betas)
        best, best_loss = x.detach().clone(), torch.full((), math.inf, device=x.device)

        def keep_if_better(loss: torch.Tensor) -> None:
            nonlocal best, best_loss
            better = loss.detach() < best_loss
            best, best_loss = torch.where(better, x.detach(), best), torch.where(better, loss.detach(), best_loss)

        for step in range(iterations):
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * self.lr * (1 + math.cos(math.pi * step / iterations))
            terms = self.losses(self._augment(x), targets, hooks)
            keep_if_better(terms["total"])
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            with torch.no_grad():
                self.clamp_(x)
        with torch.no_grad():  # the last step's result, which the loop never scored
            keep_if_better(self.losses(self._augment(x), targets, hooks)["total"])
        return best, float(best_loss)

    def synthesize(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = time.perf_counter()
        self.teacher.eval()  # BN must normalize with running statistics and leave them alone
        targets = self.balanced_targets(n).to(self.device)
        c, h, w = self.image_shape
        warmup = min(self.multires_iterations, self.iterations - 1)
        aims = self.mixed_targets(targets)
        with torch.enable_grad(), temporarily_frozen(self.student), self.bn_hooks() as hooks:
            if warmup > 0:  # a coarse first phase at half resolution, then upsampled
                coarse, _ = self._optimize(self.noise(n, (c, h // 2, w // 2)), aims, warmup, hooks)
                x = F.interpolate(coarse, size=(h, w), mode="nearest")
            else:
                x = self.noise(n)
            best, best_loss = self._optimize(x, aims, self.iterations - warmup, hooks)
            self.remember_bn(hooks)
        seconds = time.perf_counter() - start  # judging the batch is not part of its cost
        self.stats = {"synthesis/seconds": seconds, "synthesis/loss": best_loss,
                      **self.judge_and_remember(best, targets)}
        return best, targets
