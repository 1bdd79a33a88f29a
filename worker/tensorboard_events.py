"""TensorBoard event files for a finished run, written from the job's stored metric points.

They are written once, when the adapter is packaged, from the same points as `metrics.json`: a resumed
run's rewritten steps therefore appear once, and the files agree with the job page to the step. Every
numeric value of a point becomes a scalar at its step (`train/loss`, `train/lr`, `train/grad_norm`,
reward metrics of a reinforcement job, `eval/loss` for `eval_loss`...), at the time the step was
recorded; the settings go in as a text table and as hparams (with the final losses as their metrics),
so `tensorboard --logdir runs` shows them beside the curves. TensorBoard's own writer writes them
(through torch.utils.tensorboard), never a hand-made record format.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HPARAMS_RUN = "hparams"  # the subfolder TensorBoard's hparams plugin reads the settings from
NOT_SCALARS = {"step"}


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a metric: `eval_loss` -> `eval/loss`, `loss` -> `train/loss`."""
    if key.startswith("eval_"):
        return f"eval/{key[len('eval_') :]}"
    return f"train/{key}"


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _hparam_value(value: Any) -> int | float | str | bool:
    if isinstance(value, (int, float, str, bool)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def settings_markdown(config: Mapping[str, Any]) -> str:
    """The settings as a Markdown table (TensorBoard's text plugin renders it)."""
    rows = "\n".join(f"| {key} | {_hparam_value(value)} |" for key, value in config.items())
    return f"| setting | value |\n| --- | --- |\n{rows}"


def write_tensorboard_events(
    log_dir: str | Path,
    *,
    metrics: list[dict[str, Any]],
    config: Mapping[str, Any],
    walltimes: Mapping[int, float] | None = None,
) -> list[Path]:
    """Write the run's scalars, settings text and hparams under `log_dir`; the files written.

    `metrics`: points with a `step` and any metrics (as in metrics.json); `walltimes`: step -> the
    Unix time it was recorded (now when absent)."""
    from torch.utils.tensorboard import SummaryWriter  # imports TensorBoard: only when packaging

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    walltimes = walltimes or {}
    writer = SummaryWriter(log_dir=str(log_dir), max_queue=1000, flush_secs=3600)
    try:
        finals: dict[str, float] = {}
        for point in metrics:
            step = int(point["step"])
            for key, value in point.items():
                if key in NOT_SCALARS or not _is_scalar(value):
                    continue
                writer.add_scalar(scalar_tag(key), float(value), global_step=step, walltime=walltimes.get(step))
                finals[key] = float(value)
        writer.add_text("settings", settings_markdown(config), global_step=0)
        final_metrics = {f"final/{key}": finals[key] for key in ("loss", "eval_loss") if key in finals}
        hparams = {key: _hparam_value(value) for key, value in config.items() if value is not None}
        writer.add_hparams(hparams, final_metrics, run_name=HPARAMS_RUN)
    finally:
        writer.close()
    return sorted(p for p in log_dir.rglob("*") if p.is_file())
