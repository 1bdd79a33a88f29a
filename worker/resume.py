"""Resume and checkpoints, the recipe's phase between setup and the loop: continue from the newest checkpoint that
reads whole (the one before when the newest is damaged), and save one between steps. `worker.engine.TrainingRun`
inherits them."""

from __future__ import annotations

from worker.checkpoint import (
    Checkpoint,
    CheckpointUnreadable,
    checkpoint_folders,
    discard_checkpoint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from worker.run_state import RunState


class Checkpointing(RunState):
    """A run's resume and checkpoint phases over its state."""

    def resume(self) -> None:
        """Continue from the newest checkpoint that reads whole: weights, optimizer, schedule, best eval.

        Unreadable checkpoints are reported and removed (else pruning could keep them over good ones).
        With several ranks, rank 0 picks the checkpoint and the others load that same one; dropout draws
        differ per rank.
        """
        if self.devices.writes:
            self.resume_newest()
        step = self.devices.from_main(self.start_step)
        if step != self.start_step:  # a rank that does not write: rank 0's checkpoint
            self.load(read_checkpoint(self.folders.checkpoints / f"step-{step:06d}"))
        self.devices.sync_weights(self.optim.params)
        self.devices.reseed(self.cfg.seed, step)

    def load(self, ckpt: Checkpoint) -> None:
        """Weights, optimizer, schedule and best eval loss from `ckpt`; the run goes on after its step."""
        opt = self.optim
        load_checkpoint(ckpt, model=self.model, optimizer=opt.optimizer, scheduler=opt.scheduler)
        self.best.restore(ckpt.best)
        self.start_step = self.step = ckpt.step

    def resume_newest(self) -> None:
        ckpt, unreadable = None, []
        for folder in checkpoint_folders(self.folders.checkpoints):
            try:
                ckpt = read_checkpoint(folder)
                break
            except CheckpointUnreadable as exc:
                unreadable.append(folder)
                self.reporter.event("warning", f"{exc}; it is removed and the checkpoint before it is tried")
        if unreadable:
            self.guard()
            for folder in unreadable:
                discard_checkpoint(folder)
        names = ", ".join(folder.name for folder in unreadable)
        if ckpt is None:
            if unreadable:
                self.reporter.event("warning", f"no checkpoint could be read ({names}); starting from step 0")
            return
        self.load(ckpt)
        saved = ckpt.state.get("precision")
        if saved and saved != self.train_dev.precision:  # e.g. auto on a worker without native bf16
            self.reporter.event(
                "warning",
                f"the checkpoint was trained with a {saved} base and this run's is "
                f"{self.train_dev.precision}; the loss curve may shift slightly",
            )
        self.reporter.event(
            "resume",
            f"resumed from checkpoint at step {self.start_step}" + (f" ({names} unreadable)" if unreadable else ""),
        )

    def checkpoint(self) -> None:
        """Save the current step's checkpoint (rank 0's: the ranks hold the same weights; sharded, every rank
        gives its shards of the adapter and the optimizer state, gathered whole for rank 0 to write)."""
        gathered = self.devices.checkpoint_state(self.model, self.optim.optimizer)
        if not self.devices.writes:
            return
        self.guard()
        folder = save_checkpoint(
            self.folders.checkpoints,
            step=self.step,
            model=self.model,
            optimizer=self.optim.optimizer,
            scheduler=self.optim.scheduler,
            extra={"total_steps": self.total_steps, "best": self.best.state(), "precision": self.train_dev.precision},
            **gathered,
        )
        self.checkpoint_saved(folder)
