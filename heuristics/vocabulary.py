"""Which reported metric plays which part: declared by the experiment, never assumed.

A training reports whatever metric names its authors chose (``loss``, ``train_loss``,
``loss_g``, ``d_loss``, ``val_acc`` ...). The monitor's rules, exporter, store and dashboards
speak of *roles* instead: ``train_loss``, ``generator_loss``, ``discriminator_loss``,
``adversarial_loss``, ``validation``, ``grad_norm``, ``step_time_s``. A ``Vocabulary`` maps each
role to the key a training reports (or to nothing), states the validation metric's direction,
and the adversarial loss family (GAN losses live on different scales and signs).

    Vocabulary(train_loss="loss", validation="val_loss", mode="min")
    Vocabulary(generator_loss="g_loss", discriminator_loss="d_loss", gan_loss="hinge",
               validation="val_fid", mode="min")
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ROLES = {
    "train_loss": "the training loss (lower is better; any sign)",
    "generator_loss": "a GAN's total generator loss",
    "discriminator_loss": "a GAN's discriminator loss",
    "adversarial_loss": "the generator's adversarial term alone",
    "validation": "the validation metric that ranks trials",
    "grad_norm": "gradient norm before clipping",
    "step_time_s": "wall time per training step, in seconds",
}
GAN_LOSSES = ("lsgan", "hinge", "wasserstein", "bce")

# Keys Ray Tune (or a plain loop) adds to every result: bookkeeping, never a signal.
BOOKKEEPING = frozenset({
    "training_iteration", "time_total_s", "time_this_iter_s", "timestamp", "time_since_restore",
    "iterations_since_restore", "timesteps_total", "episodes_total", "timesteps_since_restore",
    "pid", "date", "hostname", "node_ip", "node_id", "done", "trial_id", "experiment_id",
    "experiment_tag", "should_checkpoint", "checkpoint_dir_name", "max_iterations",
})


class Vocabulary(BaseModel):
    """The roles of an experiment's reported metrics (each a result key, or ``None``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_loss: str | None = None
    generator_loss: str | None = None
    discriminator_loss: str | None = None
    adversarial_loss: str | None = None
    validation: str | None = None
    mode: Literal["min", "max"] = "min"
    grad_norm: str | None = None
    step_time_s: str | None = None
    gan_loss: Literal["lsgan", "hinge", "wasserstein", "bce"] | None = None
    role: str = Field("trial", description="the role label of this experiment's trials")

    @field_validator("train_loss", "generator_loss", "discriminator_loss", "adversarial_loss",
                     "validation", "grad_norm", "step_time_s")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or value in BOOKKEEPING):
            raise ValueError(f"expected the name of a reported metric, got {value!r}")
        return value

    def keys(self) -> dict[str, str]:
        """``{role: result key}`` of every declared role."""
        return {role: key for role in ROLES if (key := getattr(self, role)) is not None}

    def declares(self, role: str) -> bool:
        return getattr(self, role, None) is not None

    def better(self, a: float, b: float) -> bool:
        """Whether validation value ``a`` is better than ``b``."""
        return a < b if self.mode == "min" else a > b

    @classmethod
    def from_mapping(cls, data: Any) -> Vocabulary:
        """From an experiment file's ``signals:`` mapping (raises pydantic's ValidationError)."""
        return cls.model_validate(data or {})
