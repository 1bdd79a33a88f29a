"""The job form. Its validation defers to worker.config.TrainConfig, the single source of truth."""
from __future__ import annotations

from django import forms

from jobs.base_models.models import BaseModel
from jobs.base_models.selectors import base_model_list
from jobs.training.models import JobStatus
from jobs.training.selectors import job_list
from jobs.accounts.limits import QuotaExceeded
from jobs.training.plan import JobPlan, JobRefused, job_plan, validation_problems
from jobs.datasets.models import Dataset
from worker.config import BIAS_CHOICES, LR_SCHEDULERS, PRESETS, ConfigError, TrainConfig

DEFAULTS = TrainConfig()
TARGET_CHOICES = [
    ("attention", "Attention (q, k, v, o projections)"),
    ("mlp", "MLP (feed-forward projections)"),
    ("all_linear", "All linear layers"),
    ("custom", "Custom list"),
]
METHOD_CHOICES = [("supervised", "Supervised (examples with answers)"),
                  ("dpo", "DPO (preference pairs; reference = the base)"),
                  ("orpo", "ORPO (preference pairs; no reference model)")]
VALIDATION_CHOICES = [("split", "Split off part of the dataset"), ("dataset", "Another dataset"), ("none", "None")]
CONFIG_FIELDS = ("method", "beta", "start_from", "rank", "alpha", "dropout", "target_preset", "target_modules", "qlora", "epochs",
                 "learning_rate", "batch_size", "grad_accum", "max_seq_length", "warmup_ratio", "lr_scheduler",
                 "weight_decay", "seed", "use_rslora", "use_dora", "bias", "gradient_checkpointing",
                 "init_lora_weights", "modules_to_save", "optimizer", "packing", "max_grad_norm", "eval_every",
                 "save_every", "early_stopping_patience", "early_stopping_threshold", "keep_best", "devices",
                 "sharding", "precision", "max_steps", "final_eval", "liger")
PRESET_CHOICES = [("", "Custom (as set below)"),
                  ("quick", "Quick: rank 8 on attention, 1 epoch, lr 2e-3"),
                  ("balanced", "Balanced: rank 16 on attention, 2 epochs, lr 1e-3"),
                  ("quality", "Quality: rank 16 on all linear layers, 3 epochs, lr 5e-4 cosine")]
INIT_CHOICES = [("default", "Default (A random, B zero)"), ("gaussian", "Gaussian"),
                ("pissa", "PiSSA (principal singular vectors; 16-bit base only)")]
SHARDING_CHOICES = [("none", "None: each device holds the whole base (data parallel)"),
                    ("fsdp", "FSDP: the base is split across the devices (for a model too large for one)")]
PRECISION_CHOICES = [("auto", "Auto: bf16 where the device computes it natively, else fp32"),
                     ("fp32", "fp32 (full precision, twice the base's memory)"), ("bf16", "bf16"),
                     ("fp16", "fp16 (CUDA only)")]
OPTIMIZER_CHOICES = [("adamw", "AdamW"), ("paged_adamw_8bit", "Paged 8-bit AdamW (CUDA only)")]
# The form's sections, declared once: (legend, folded under "Advanced"?, fields in order).
FIELDSETS = (
    ("What to train", False, ("preset", "name", "base_model", "dataset", "method", "beta", "start_from")),
    ("LoRA", False, ("rank", "alpha", "dropout", "target_preset", "target_modules", "qlora")),
    ("Training", False, ("epochs", "learning_rate", "batch_size", "max_seq_length")),
    ("Validation", False, ("validation", "validation_percent", "validation_seed", "validation_dataset")),
    ("", True, ("grad_accum", "warmup_ratio", "lr_scheduler", "weight_decay", "seed", "bias", "use_rslora",
                "use_dora", "gradient_checkpointing", "init_lora_weights", "modules_to_save", "optimizer",
                "max_grad_norm", "packing", "liger", "devices", "sharding", "precision", "max_steps")),
    ("Evaluation and checkpoints", True, ("eval_every", "early_stopping_patience", "early_stopping_threshold",
                                          "keep_best", "final_eval", "save_every")),
)


def clone_initial(job) -> dict:
    """The form's values for a new job made from `job`: its data, settings and validation (a "copy" name)."""
    config = TrainConfig.from_dict(job.config)
    initial = {name: getattr(config, name) for name in CONFIG_FIELDS}
    for name in ("target_modules", "modules_to_save"):
        initial[name] = ", ".join(initial[name])
    validation = job.validation or {}
    initial.update(preset="", name=f"{job.name or job.short_id} (copy)"[:200], base_model=job.base_model,
                   validation=validation.get("kind", "none"))
    if job.dataset is not None:
        initial["dataset"] = job.dataset
    if validation.get("kind") == "split":
        initial.update(validation_percent=validation.get("percent"), validation_seed=validation.get("seed"))
    elif validation.get("kind") == "dataset":
        initial["validation_dataset"] = validation.get("dataset")
    return initial


class JobForm(forms.Form):
    name = forms.CharField(max_length=200, required=False)
    base_model = forms.ModelChoiceField(queryset=BaseModel.objects.none(), empty_label=None)
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.none(), empty_label=None)
    preset = forms.ChoiceField(choices=PRESET_CHOICES, required=False, initial="balanced",
                               help_text="fills the fields below; change any of them afterwards")
    method = forms.ChoiceField(choices=METHOD_CHOICES, required=False, initial=DEFAULTS.method,
                               help_text="DPO and ORPO train on a dataset of preference pairs (prompt, chosen, "
                                         "rejected)")
    beta = forms.FloatField(required=False, initial=DEFAULTS.beta, label="Beta (DPO) / lambda (ORPO)",
                            help_text="DPO: how strongly the model is held near the base (higher = closer); "
                                      "ORPO: the weight of the preference term. 0.1 is usual")
    start_from = forms.ChoiceField(required=False, label="Start from",
                                   help_text="a previous job's adapter to continue from (its rank and layers are "
                                             "kept); for DPO it is also the reference, e.g. DPO on top of an "
                                             "SFT job")
    rank = forms.IntegerField(initial=DEFAULTS.rank, help_text="LoRA rank r; 8-16 is usual")
    alpha = forms.FloatField(initial=DEFAULTS.alpha, help_text="scale is alpha / r; 2 x rank is usual")
    dropout = forms.FloatField(initial=DEFAULTS.dropout)
    target_preset = forms.ChoiceField(choices=TARGET_CHOICES, initial=DEFAULTS.target_preset, label="Target layers")
    target_modules = forms.CharField(required=False, label="Custom modules",
                                     help_text="comma-separated, e.g. q_proj, v_proj (only for Custom list)")
    qlora = forms.BooleanField(required=False, initial=DEFAULTS.qlora, label="QLoRA (4-bit NF4 base)")
    epochs = forms.FloatField(initial=DEFAULTS.epochs)
    learning_rate = forms.FloatField(initial=DEFAULTS.learning_rate)
    batch_size = forms.IntegerField(initial=DEFAULTS.batch_size)
    grad_accum = forms.IntegerField(initial=DEFAULTS.grad_accum, label="Gradient accumulation")
    max_seq_length = forms.IntegerField(initial=DEFAULTS.max_seq_length, label="Max sequence length")
    warmup_ratio = forms.FloatField(initial=DEFAULTS.warmup_ratio)
    lr_scheduler = forms.ChoiceField(choices=[(s, s) for s in LR_SCHEDULERS], initial=DEFAULTS.lr_scheduler)
    weight_decay = forms.FloatField(initial=DEFAULTS.weight_decay)
    seed = forms.IntegerField(initial=DEFAULTS.seed)
    use_rslora = forms.BooleanField(required=False, label="rsLoRA (alpha / sqrt(r))")
    use_dora = forms.BooleanField(required=False, label="DoRA")
    bias = forms.ChoiceField(choices=[(b, b) for b in BIAS_CHOICES], initial=DEFAULTS.bias)
    gradient_checkpointing = forms.BooleanField(required=False)
    init_lora_weights = forms.ChoiceField(choices=INIT_CHOICES, required=False, initial=DEFAULTS.init_lora_weights, label="LoRA init")
    modules_to_save = forms.CharField(required=False, label="Also train in full",
                                      help_text="comma-separated whole modules saved with the adapter, "
                                                "e.g. lm_head, embed_tokens (large)")
    optimizer = forms.ChoiceField(choices=OPTIMIZER_CHOICES, required=False, initial=DEFAULTS.optimizer)
    packing = forms.BooleanField(required=False, label="Packing (no padding; examples kept apart by the mask)")
    liger = forms.BooleanField(required=False, label="Liger kernels (CUDA)",
                               help_text="Liger's fused Triton kernels (RMSNorm, SwiGLU, fused linear "
                                         "cross-entropy): less memory, often faster; GPU workers only")
    devices = forms.IntegerField(required=False, initial=DEFAULTS.devices, label="Devices",
                                 help_text="train on this many GPUs (or CPU processes) at once; the batch is "
                                           "split across them, so results match one device")
    sharding = forms.ChoiceField(choices=SHARDING_CHOICES, required=False, initial=DEFAULTS.sharding,
                                 label="Sharding (with several devices)",
                                 help_text="FSDP stores 1/N of the frozen base on each of N devices; same results, "
                                           "more communication. Not with QLoRA or PiSSA")
    precision = forms.ChoiceField(choices=PRECISION_CHOICES, required=False, initial=DEFAULTS.precision,
                                  label="Base precision",
                                  help_text="the dtype the frozen base is stored and computed in; LoRA weights and "
                                            "the optimizer stay fp32")
    max_grad_norm = forms.FloatField(required=False, initial=DEFAULTS.max_grad_norm, label="Gradient clipping (max norm, 0 = off)")
    eval_every = forms.IntegerField(required=False, initial=DEFAULTS.eval_every, label="Evaluate every N steps",
                                    help_text="0: about ten evaluations per run")
    save_every = forms.IntegerField(required=False, initial=DEFAULTS.save_every, label="Checkpoint every N steps")
    early_stopping_patience = forms.IntegerField(required=False, initial=DEFAULTS.early_stopping_patience,
                                                 label="Early stopping patience",
                                                 help_text="stop after this many evaluations without a better "
                                                           "eval loss; 0 = off")
    early_stopping_threshold = forms.FloatField(required=False, initial=DEFAULTS.early_stopping_threshold,
                                                label="Early stopping threshold",
                                                help_text="how much lower an eval loss must be to count")
    keep_best = forms.BooleanField(required=False, initial=DEFAULTS.keep_best, label="Keep the best checkpoint",
                                   help_text="export the adapter with the lowest eval loss, not the last one")
    max_steps = forms.IntegerField(required=False, initial=DEFAULTS.max_steps, label="Max steps",
                                   help_text="stop after this many optimizer steps; 0 = run the epochs above")
    final_eval = forms.BooleanField(required=False, initial=DEFAULTS.final_eval, label="Compare base and adapted at the end",
                                    help_text="generate the held-out answers of both and score them")
    validation = forms.ChoiceField(choices=VALIDATION_CHOICES, initial="split", label="Validation set")
    validation_percent = forms.FloatField(initial=10, required=False, label="Validation %")
    validation_seed = forms.IntegerField(initial=42, required=False, label="Split seed")
    validation_dataset = forms.ModelChoiceField(queryset=Dataset.objects.none(), required=False,
                                                label="Validation dataset")

    def __init__(self, *args, owner, refuse: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["base_model"].queryset = base_model_list(owner=owner)
        self.fields["dataset"].queryset = Dataset.objects.filter(owner=owner)
        self.fields["validation_dataset"].queryset = Dataset.objects.filter(owner=owner)
        done = job_list(owner=owner, status=JobStatus.SUCCEEDED).select_related("base_model")
        self.fields["start_from"].choices = [("", "Nothing: a new adapter on the base model")] + [
            (str(j.id), f"{j.name or j.short_id} ({j.config.get('method', 'supervised')} on {j.base_model.name})")
            for j in done]
        self.owner = owner
        self.refuse = refuse  # off for the estimate: a job that fits nowhere is shown, not refused
        self.plan: JobPlan | None = None
        self.estimate = None
        self.quota_exceeded = False
        self.presets = PRESETS

    def _fieldsets(self, advanced: bool) -> list[tuple[str, list]]:
        return [(legend, [self[name] for name in names]) for legend, folded, names in FIELDSETS if folded == advanced]

    @property
    def main_fieldsets(self) -> list[tuple[str, list]]:
        """The sections always shown, each as (legend, bound fields)."""
        return self._fieldsets(False)

    @property
    def advanced_fieldsets(self) -> list[tuple[str, list]]:
        """The sections folded under "Advanced"."""
        return self._fieldsets(True)

    @property
    def advanced_has_errors(self) -> bool:
        """True when a field folded under "Advanced" is wrong: the section then comes back open."""
        return any(name in self.errors for _legend, folded, names in FIELDSETS if folded for name in names)

    def clean(self):
        """Every TrainConfig and validation-set rule broken, each beside its field and all at once; then, with
        none, the job's plan (`job_plan`, the rules of every caller): its error beside its field, or the plan
        and its estimate."""
        data = super().clean()
        # A left-empty optional field keeps its default; a field that is already wrong is left to its message.
        values = {k: data[k] for k in CONFIG_FIELDS
                  if k in data and data[k] not in (None, "") and k not in self.errors}
        for exc in TrainConfig.problems(values):
            self._add_config_error(exc)
        # The validation set's problems too, all at once (the plan's own rules); then the plan checks the rest.
        for exc in validation_problems(owner=self.owner, dataset=data.get("dataset"), config=None,
                                       kind=data.get("validation"), percent=data.get("validation_percent"),
                                       seed=data.get("validation_seed"), other=data.get("validation_dataset")):
            self._add_config_error(exc)
        if self.errors or data.get("base_model") is None or data.get("dataset") is None:
            return data
        try:
            self.plan = job_plan(owner=self.owner, dataset=data["dataset"], base_model=data["base_model"],
                                 config=TrainConfig.from_dict(values), validation=data.get("validation"),
                                 validation_percent=data.get("validation_percent"),
                                 validation_seed=data.get("validation_seed"),
                                 validation_dataset=data.get("validation_dataset"), refuse=self.refuse)
        except JobRefused as exc:
            self.estimate = exc.plan.estimate  # shown with its advice beside the refusal
            self.add_error(None, exc.message[0].upper() + exc.message[1:])
        except ConfigError as exc:
            self._add_config_error(exc)
        except QuotaExceeded as exc:
            self.quota_exceeded = True
            self.add_error(None, exc.message)
        else:
            self.estimate = self.plan.estimate
        return data

    def _add_config_error(self, exc: ConfigError) -> None:
        """The message beside its field, or at the top naming the field in words when the form has none."""
        if exc.field in self.fields:
            if exc.field not in self.errors:
                self.add_error(exc.field, exc.message[0].upper() + exc.message[1:])
        else:
            self.add_error(None, f"{exc.field.replace('_', ' ').capitalize()} {exc.message}")


def setting_rows(config: dict) -> list[tuple[str, str, object]]:
    """A job's settings for people: (field name, the form's label, value shown), in the form's order, then any
    setting the form does not show."""
    fields = JobForm.base_fields
    order = [name for _legend, _folded, names in FIELDSETS for name in names if name in config]
    order += [name for name in config if name not in order]
    rows = []
    for name in order:
        field = fields.get(name)
        label = str(field.label) if field is not None and field.label else name.replace("_", " ").capitalize()
        value = config[name]
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(value) or "–"
        elif value == "":
            value = "–"
        rows.append((name, label, value))
    return rows
