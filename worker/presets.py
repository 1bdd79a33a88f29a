"""The job form's starting points (quick, balanced, quality): the settings each one fills and the goal it is to
people. Every value can still be changed; `worker.config.TrainConfig.from_dict` applies them, `preset_of` names
a config's."""

from __future__ import annotations

from typing import Any

# Starting points; every value can still be changed. Alpha is 2 x rank throughout (the usual guidance).
PRESETS: dict[str, dict[str, Any]] = {
    # A first look in minutes: rank 8 on attention, one epoch, a higher learning rate.
    "quick": {
        "rank": 8,
        "alpha": 16,
        "dropout": 0.05,
        "target_preset": "attention",
        "epochs": 1,
        "learning_rate": 2e-3,
        "lr_scheduler": "linear",
        "use_rslora": False,
    },
    # The defaults: rank 16 on attention, two epochs.
    "balanced": {
        "rank": 16,
        "alpha": 32,
        "dropout": 0.05,
        "target_preset": "attention",
        "epochs": 2,
        "learning_rate": 1e-3,
        "lr_scheduler": "linear",
        "use_rslora": False,
    },
    # Every Linear layer, three epochs, a lower learning rate with a cosine decay.
    "quality": {
        "rank": 16,
        "alpha": 32,
        "dropout": 0.05,
        "target_preset": "all_linear",
        "epochs": 3,
        "learning_rate": 5e-4,
        "lr_scheduler": "cosine",
        "use_rslora": False,
    },
}

# Each preset as the goal a person picks on the job form: (name, what it trades, in one line).
PRESET_GOALS: dict[str, tuple[str, str]] = {
    "quick": ("Quick try", "The fastest: one pass over the data with a small adapter; rougher answers."),
    "balanced": ("Balanced", "Two passes with a medium adapter: about twice the quick try's time; the usual choice."),
    "quality": (
        "Best quality",
        "Three passes that adapt every layer: three times the quick try's time or more; usually the best answers.",
    ),
}
