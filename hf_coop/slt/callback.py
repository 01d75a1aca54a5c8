"""`FrozenSLTCallback`: the Trainer side of a strong lottery ticket search."""

from __future__ import annotations

import os

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .model import FrozenSLTModel

TICKET_DIRNAME = "slt_ticket"


class FrozenSLTCallback(TrainerCallback):
    """Re-ranks global thresholds, logs realised sparsity per layer, and saves the compact ticket.

    Use with `Trainer(model=slt_model.base_model, ..., callbacks=[FrozenSLTCallback(slt_model)])`. The
    Trainer's default optimizer already sees only trainable tensors (scores and declared extras); pass
    `optimizers=(torch.optim.AdamW(slt_model.optimizer_param_groups()), None)` to give scores their own
    weight decay. Each checkpoint folder gets a `slt_ticket/` subfolder (written by the main process only).
    """

    def __init__(self, slt_model: FrozenSLTModel, log_per_layer: bool = True) -> None:
        self.slt_model = slt_model
        self.log_per_layer = log_per_layer

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        config = self.slt_model.slt_config
        if config.threshold == "global" and state.global_step % config.update_every == 0:
            self.slt_model.update_thresholds()

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs
    ):
        report = self.slt_model.sparsity_report()
        entries = {"slt_sparsity": report.pop("overall")["sparsity"]}
        if self.log_per_layer:
            entries.update({f"slt_sparsity/{name}": stats["sparsity"] for name, stats in report.items()})
        if logs is not None:
            logs.update(entries)
        if state.log_history:
            # The Trainer appends a copy of `logs` to its history before calling callbacks.
            state.log_history[-1].update(entries)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if state.is_world_process_zero:
            checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            self.slt_model.save_pretrained(os.path.join(checkpoint, TICKET_DIRNAME))
