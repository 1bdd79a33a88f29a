"""Signals other domains connect to. A dataset about to be deleted: a receiver raises DatasetInUse
to refuse (training does, while an unfinished job reads the dataset)."""

from django.dispatch import Signal

dataset_deleting = Signal()  # sender=Dataset, dataset=<Dataset>
