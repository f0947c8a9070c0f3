"""Orbax checkpoints of the whole training state: params, optimizer state, step, data iterator.

Layout under a run directory: `checkpoints/` (periodic + final, newest two kept) and
`checkpoints/best/` (the best by validation CE). Each step directory holds `state` (arrays),
`data` (the grain iterator's JSON state) and `meta` (JSON: step, validation curve, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from core.errors import MgrError
from mgr.runtime import allocator

META_KEYS = frozenset({"step", "val_curve", "best_val", "train_seconds"})  # what resume reads


_MANAGERS = [0]  # managers made by this process, in the same order in every process of a job


class Checkpointer:
    def __init__(self, directory: Path, *, max_to_keep: int = 2):
        from mgr.runtime import distributed

        self.directory = Path(directory).absolute()
        _MANAGERS[0] += 1
        # Under several processes orbax synchronises saves with barriers named by step; the
        # periodic and the best manager both save step N, and their barriers would collide (the
        # second waits forever), so each manager gets its own prefix. Every process saves and
        # restores (collectively); process 0 writes the metadata.
        multi = (ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=f"mgr{_MANAGERS[0]}")
                 if distributed.process_count() > 1 else ocp.options.MultiprocessingOptions())
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=True,
                                                 multiprocessing_options=multi),
        )

    def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
        # The previous async save must finish before the donated state buffers are reused.
        self.manager.wait_until_finished()
        # The steps' freed temporaries stay resident in the allocator; handed back first, the
        # save's own buffers do not stack on them (C1's peak was at its final save).
        allocator.release_free_memory()
        if step in self.manager.all_steps():
            # A run resumed from an older checkpoint reaches this step again (a newer one was
            # unreadable, or a kill fell between the best and the periodic save); the run is
            # deterministic, so the new save replaces the old one (orbax refuses duplicates).
            self.manager.delete(step)
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta)), force=True)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, template_state: Any, step: int | None = None) -> tuple[Any, dict, dict]:
        """Restore into the structure of `template_state`; unreadable data raises MgrError.

        The message names only the step: orbax's own texts carry object and class reprs that
        mean nothing to a user (`mgr.train.resume` turns failures into one line per run).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise MgrError(f"no checkpoint to resume from in {self.directory.name}/")
        # Each abstract array carries the template's sharding: a checkpoint saved under one mesh
        # is read straight into the layout of the run that resumes it (orbax reshards on read).
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_state)
        try:
            r = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore()))
            meta = r["meta"]
            if not META_KEYS <= set(meta):
                raise ValueError("incomplete meta")
        except Exception:  # orbax raises many types for corrupt or mismatched files
            raise MgrError(f"cannot read checkpoint at step {step}") from None
        return r["state"], r["data"], meta

    def read_meta(self, step: int) -> dict:
        """Only the JSON meta of a checkpoint (no arrays, so no template is needed)."""
        try:
            return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        except Exception:  # as in restore: orbax's messages are not for the user
            raise MgrError(f"cannot read checkpoint at step {step}") from None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class NoCheckpoints:
    """Stands in for a Checkpointer when a run keeps no checkpoints (benchmark arms)."""

    def save(self, *args, **kwargs) -> None:
        pass

    def all_steps(self) -> list[int]:
        return []

    def restore(self, *args, **kwargs):
        raise MgrError("this run kept no checkpoints, so it cannot be resumed")

    def wait(self) -> None:
        pass

    def close(self) -> None:
        pass
