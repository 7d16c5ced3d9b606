"""Knowledge distillation: a small student learns from the teacher's softened outputs.

loss = alpha * CE(y, student) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))

The same student architecture trained from scratch on hard labels, for the same epochs with
the same seed, is measured beside it: the gain from distillation is a number, not a claim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeship.compression.base import PassContext, fine_tune
from edgeship.core.errors import InputError
from edgeship.training.evaluation import accuracy
from edgeship.training.keras_env import keras, seed_everything, tf
from edgeship.training.models import MODELS, ModelOptions, build_model, count_params


@dataclass(frozen=True)
class DistillConfig:
    student: str | None = None  # a registry name; None = the teacher's architecture, narrower
    student_width: float = 0.25
    temperature: float = 4.0
    alpha: float = 0.1
    epochs: int = 30

    def check(self) -> None:
        if self.student is not None and self.student not in MODELS:
            raise InputError(f"--student {self.student}: unknown model; valid students: "
                             f"{', '.join(MODELS)}")
        if not 0 < self.student_width <= 1:
            raise InputError(f"--student-width {self.student_width}: use a fraction in (0, 1]")
        if self.temperature <= 0:
            raise InputError(f"--temperature {self.temperature}: use a positive temperature, e.g. 4")
        if not 0 <= self.alpha <= 1:
            raise InputError(f"--alpha {self.alpha}: use a weight in [0, 1]")
        if self.epochs < 1:
            raise InputError(f"--distill-epochs {self.epochs}: use at least 1")


def logits_model(model: Any) -> Any:
    """The model up to its logits (edgeship models name them); else log-probabilities."""
    k = keras()
    try:
        return k.Model(model.inputs, model.get_layer("logits").output)
    except ValueError:
        t = tf()
        return k.Model(model.inputs, t.math.log(t.clip_by_value(model.outputs[0], 1e-7, 1.0)))


def build_student(teacher: Any, ctx: PassContext, cfg: DistillConfig) -> tuple[Any, str]:
    shape = tuple(ctx.x_train.shape[1:])
    name = cfg.student or ctx.model_name
    options = dict(ctx.model_options or {})
    if cfg.student is None:
        options["width"] = float(options.get("width", 1.0)) * cfg.student_width
    kind = "image" if len(shape) == 3 else "tabular"
    if kind not in MODELS[name].kinds:
        raise InputError(f"--student {name} is for {'/'.join(MODELS[name].kinds)} data; this run is {kind}")
    fields = {f for f in ModelOptions.__dataclass_fields__}
    opts = ModelOptions(**{k: v for k, v in options.items() if k in fields})
    return build_model(name, shape, len(ctx.labels), opts), name


def distill(teacher: Any, ctx: PassContext, cfg: DistillConfig) -> Any:
    """The distilled student. Also trains its scratch twin and records both in ``ctx.notes``."""
    cfg.check()
    k, t = keras(), tf()
    seed_everything(ctx.seed)
    student, name = build_student(teacher, ctx, cfg)
    seed_everything(ctx.seed)
    scratch, _ = build_student(teacher, ctx, cfg)
    scratch.set_weights(student.get_weights())  # same initialisation: only the loss differs

    teacher_logits = logits_model(teacher).predict(ctx.x_train, batch_size=512, verbose=0)
    student_logits = logits_model(student)
    optimizer = k.optimizers.Adam(ctx.learning_rate * 2)
    temp, alpha = float(cfg.temperature), float(cfg.alpha)
    ce = k.losses.SparseCategoricalCrossentropy(from_logits=True)

    @t.function
    def step(x: Any, y: Any, t_logits: Any) -> Any:
        with t.GradientTape() as tape:
            s_logits = student_logits(x, training=True)
            hard = ce(y, s_logits)
            p_t = t.nn.softmax(t_logits / temp)
            log_p_s = t.nn.log_softmax(s_logits / temp)
            log_p_t = t.nn.log_softmax(t_logits / temp)
            soft = t.reduce_mean(t.reduce_sum(p_t * (log_p_t - log_p_s), axis=-1)) * temp**2
            loss = alpha * hard + (1 - alpha) * soft
        grads = tape.gradient(loss, student_logits.trainable_variables)
        optimizer.apply_gradients(zip(grads, student_logits.trainable_variables, strict=True))
        return loss

    rng = np.random.default_rng(ctx.seed)
    n = len(ctx.x_train)
    y_train = ctx.y_train.astype(np.int64)
    for _ in range(cfg.epochs):
        order = rng.permutation(n)
        for start in range(0, n, ctx.batch_size):
            idx = order[start:start + ctx.batch_size]
            step(ctx.x_train[idx], y_train[idx], teacher_logits[idx])
        if ctx.progress is not None:
            val = accuracy(student.predict(ctx.x_val, verbose=0), ctx.y_val)
            ctx.progress.update(1, status=f"student val_acc {val:.3f}")

    saved_lr = ctx.learning_rate
    ctx.learning_rate = saved_lr * 2
    try:
        fine_tune(scratch, ctx, epochs=cfg.epochs)
    finally:
        ctx.learning_rate = saved_lr
    ctx.notes["distillation"] = {
        "student": name,
        "student_params": count_params(student),
        "teacher_params": count_params(teacher),
        "temperature": temp,
        "alpha": alpha,
        "epochs": cfg.epochs,
        "val_accuracy": accuracy(student.predict(ctx.x_val, verbose=0), ctx.y_val),
        "scratch_val_accuracy": accuracy(scratch.predict(ctx.x_val, verbose=0), ctx.y_val),
    }
    ctx.side_models["scratch"] = scratch
    ctx.applied.append("distill")
    return student
